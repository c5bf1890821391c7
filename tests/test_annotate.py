"""grounded annotate end to end: three dataset formats read back, resume after kill -9, bad images listed."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from grounded.cli import main
from grounded.core.rle import decode_rle
from grounded.tasks import datasets as dx

CLASSES = "person: person, man; cup: cup, mug; flag"


def _args(images, out, tiny_gdino, tiny_sam, *extra):
    return [
        "annotate",
        str(images),
        "--out",
        str(out),
        "--classes",
        CLASSES,
        "--detector",
        str(tiny_gdino),
        "--segmenter",
        str(tiny_sam),
        "--box-threshold",
        "0.0",
        "--top-k",
        "4",
        "--batch-size",
        "2",
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def image_dir(image_files):
    return image_files["astronaut"].parent  # astronaut.png, coffee.jpg, chelsea.png, corrupt.jpg


@pytest.fixture(scope="module")
def full_run(image_dir, tiny_gdino, tiny_sam, tmp_path_factory):
    out = tmp_path_factory.mktemp("annotate") / "full"
    code = main(
        _args(image_dir, out, tiny_gdino, tiny_sam, "--format", "coco,yolo,voc", "--val-fraction", "0.34")
    )
    return code, out


def _manifest_records(out):
    db = sqlite3.connect(out / "manifest.sqlite")
    rows = db.execute("SELECT file, status, error, result FROM images ORDER BY file").fetchall()
    db.close()
    return rows


def test_all_formats_are_written_and_read_back(full_run, image_dir):
    code, out = full_run
    assert code == 1  # the corrupt image failed; the other three completed
    rows = _manifest_records(out)
    assert [(f, s) for f, s, _, _ in rows] == [
        ("astronaut.png", "done"),
        ("chelsea.png", "done"),
        ("coffee.jpg", "done"),
        ("corrupt.jpg", "error"),
    ]
    assert "corrupt.jpg" in rows[3][2] and "truncated" in rows[3][2]
    records = {f: json.loads(r) for f, s, _, r in rows if s == "done"}
    split = dx.split_files(sorted(records), 0.34)
    assert sorted(split.values()) == ["train", "train", "val"]

    # COCO, read back by pycocotools: the ontology's classes with fixed ids, polygons that give back the masks
    coco_files = {s: out / "coco" / "annotations" / f"instances_{s}.json" for s in ("train", "val")}
    seen = []
    for split_name, path in coco_files.items():
        coco = COCO(str(path))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["person", "cup", "flag"]
        assert coco.getCatIds() == [1, 2, 3]
        for img in coco.loadImgs(coco.getImgIds()):
            file = next(f for f in records if Path(f).name == img["file_name"])
            assert split[file] == split_name
            placed = out / "coco" / "images" / split_name / img["file_name"]
            assert placed.read_bytes() == (image_dir / file).read_bytes()  # copied, not re-encoded
            seen.append(file)
            rec = records[file]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            assert len(anns) == len(rec["annotations"]) == 4
            for ann, orig in zip(anns, rec["annotations"], strict=True):
                name = coco.loadCats([ann["category_id"]])[0]["name"]
                assert name == orig["category"]
                # the class comes from the ontology; the phrase is the span of its prompt the detector matched
                prompts = {"person": ["person", "man"], "cup": ["cup", "mug"], "flag": ["flag"]}[name]
                assert any(orig["phrase"] in p for p in prompts), (orig["phrase"], name)
                assert ann["attributes"]["phrase"] == orig["phrase"] and ann["iscrowd"] == 0
                assert np.array_equal(coco.annToMask(ann).astype(bool), decode_rle(orig["segmentation"]))
                assert ann["bbox"] == dx.mask_box(decode_rle(orig["segmentation"]))
    assert sorted(seen) == sorted(records)

    # YOLO segmentation: data.yaml, images and normalised polygons filled as ultralytics fills them
    data = yaml.safe_load((out / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "person", 1: "cup", 2: "flag"} and data["val"] == "images/val"
    assert "path" not in data
    ious = []
    for file, rec in records.items():
        stem = Path(file).stem
        label = out / "yolo" / "labels" / split[file] / f"{stem}.txt"
        placed = out / "yolo" / "images" / split[file] / Path(file).name
        assert placed.read_bytes() == (image_dir / file).read_bytes()
        lines = label.read_text().splitlines()
        assert len(lines) == len(rec["annotations"])
        for line, orig in zip(lines, rec["annotations"], strict=True):
            values = line.split()
            assert data["names"][int(values[0])] == orig["category"]
            xy = np.array(values[1:], float).reshape(-1, 2)
            assert xy.min() >= 0 and xy.max() <= 1
            xy *= [rec["width"], rec["height"]]
            mask = dx.fill_polygon(xy, rec["height"], rec["width"])
            ious.append(dx.mask_iou(mask, decode_rle(orig["segmentation"])))
    print(f"YOLO polygon round trip: {len(ious)} instances, min IoU {min(ious):.6f}")
    assert len(ious) == 12 and min(ious) >= 0.95

    # VOC: palette PNGs whose values are the class / instance maps (higher score on top), XML, labelmap
    labelmap = (out / "voc" / "labelmap.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in labelmap[1:]] == ["background", "person", "cup", "flag"]
    for file, rec in records.items():
        stem = Path(file).stem
        cls_png = Image.open(out / "voc" / "SegmentationClass" / f"{stem}.png")
        assert cls_png.mode == "P"
        expected = np.zeros((rec["height"], rec["width"]), np.uint8)
        anns = rec["annotations"]
        for i in sorted(range(len(anns)), key=lambda i: (anns[i]["score"], -i)):
            expected[decode_rle(anns[i]["segmentation"])] = ["person", "cup", "flag"].index(
                anns[i]["category"]
            ) + 1
        assert np.array_equal(np.array(cls_png), expected)
        obj = np.array(Image.open(out / "voc" / "SegmentationObject" / f"{stem}.png"))
        assert set(np.unique(obj)) <= set(range(len(anns) + 1))
        xml = (out / "voc" / "Annotations" / f"{stem}.xml").read_text()
        assert xml.count("<object>") == len(anns)
        assert (out / "voc" / "JPEGImages" / Path(file).name).is_file()
    for task in ("Main", "Segmentation"):
        val_list = (out / "voc" / "ImageSets" / task / "val.txt").read_text().split()
        assert val_list == [Path(f).stem for f in records if split[f] == "val"]

    report = json.loads((out / "validation.json").read_text())
    assert report["coco"] == {"images": 3, "instances": 12, "min_iou": 1.0, "mean_iou": 1.0}
    assert report["yolo"]["instances"] == 12 and report["yolo"]["min_iou"] >= 0.95
    assert report["voc"] == {"images": 3, "instances": 12, "exact": True}
    assert [f["file"] for f in report["failed"]] == ["corrupt.jpg"]


def test_rle_masks_round_trip_through_pycocotools(full_run, image_dir, tiny_gdino, tiny_sam, tmp_path):
    _, full = full_run
    out = tmp_path / "rle"
    out.mkdir()
    shutil.copyfile(
        full / "manifest.sqlite", out / "manifest.sqlite"
    )  # every image done: only the export runs
    args = _args(image_dir, out, tiny_gdino, tiny_sam, "--rle", "--link", "--val-fraction", "0.34")
    assert main(args) == 1
    report = json.loads((out / "validation.json").read_text())
    assert report["coco"] == {"images": 3, "instances": 12, "min_iou": 1.0, "mean_iou": 1.0}
    ann = json.loads((out / "coco" / "annotations" / "instances_train.json").read_text())["annotations"][0]
    assert isinstance(ann["segmentation"], dict) and ann["iscrowd"] == 1
    placed = next((out / "coco" / "images" / "train").iterdir())
    assert placed.stat().st_ino == (image_dir / placed.name).stat().st_ino  # --link: hard-linked
    assert _manifest_records(out) == _manifest_records(full)


def test_label_studio_format(full_run, image_dir, tiny_gdino, tiny_sam, tmp_path):
    _, full = full_run
    out = tmp_path / "ls"
    out.mkdir()
    shutil.copyfile(full / "manifest.sqlite", out / "manifest.sqlite")
    args = _args(image_dir, out, tiny_gdino, tiny_sam, "--format", "label-studio", "--val-fraction", "0.34")
    assert main(args) == 1
    report = json.loads((out / "validation.json").read_text())
    assert report["label-studio"] == {"images": 3, "instances": 12, "min_iou": 1.0, "mean_iou": 1.0}
    tasks = json.loads((out / "label-studio" / "tasks.json").read_text())
    assert [t["data"]["file"] for t in tasks] == ["astronaut.png", "chelsea.png", "coffee.jpg"]


def test_polygon_helpers_keep_holes_and_components():
    mask = np.zeros((40, 50), bool)
    mask[5:30, 5:30] = True
    mask[12:20, 12:20] = False  # a hole
    mask[33:38, 40:48] = True  # a second region
    mask[0, 49] = True  # a single pixel at the border
    coco = dx.coco_polygons(mask)
    assert len(coco) == 3  # one polygon per part, the hole joined to its part's outer ring
    assert dx.mask_iou(dx.polygons_to_mask(coco, 40, 50), mask) == 1.0
    yolo = dx.yolo_polygon(mask)
    filled = dx.fill_polygon(yolo, 40, 50)
    assert not filled[15, 15] and not (~filled & mask).any()  # the hole stays open, every pixel is in
    assert (filled & ~mask).sum() <= 60  # the bridges across the background: 1-pixel lines (~37 + 10 px)
    assert dx.mask_box(mask) == [5.0, 0.0, 45.0, 38.0]


def _dataset_bytes(out):
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith("manifest.sqlite")
    }


_KILLABLE = """
import sys, time
from grounded.tasks import manifest
original = manifest.Manifest.commit_done
def slow(self, file, result):
    original(self, file, result)
    time.sleep(60)  # the test kills the process while it waits here
manifest.Manifest.commit_done = slow
from grounded.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_then_resume_gives_byte_identical_datasets(
    full_run, image_dir, tiny_gdino, tiny_sam, tmp_path
):
    _, full = full_run
    out = tmp_path / "killed"
    args = _args(image_dir, out, tiny_gdino, tiny_sam, "--format", "coco,yolo,voc", "--val-fraction", "0.34")
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, *args], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "manifest.sqlite").exists():
                db = sqlite3.connect(out / "manifest.sqlite")
                try:
                    done = db.execute("SELECT COUNT(*) FROM images WHERE status='done'").fetchone()[0]
                except sqlite3.OperationalError:  # the table is not created yet
                    done = 0
                finally:
                    db.close()
                if done >= 1:
                    break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    partial = _manifest_records(out)
    assert 1 <= sum(s == "done" for _, s, _, _ in partial) < 3
    assert not (out / "coco").exists()  # nothing exported before the run completes

    assert main(args) == 1  # the same command resumes
    assert _manifest_records(out) == _manifest_records(full)
    resumed, uninterrupted = _dataset_bytes(out), _dataset_bytes(full)
    assert sorted(resumed) == sorted(uninterrupted)
    for name in resumed:
        assert resumed[name] == uninterrupted[name], name  # byte-identical COCO JSON, YOLO labels, VOC PNGs


def test_resume_with_other_settings_is_refused(full_run, image_dir, tiny_gdino, tiny_sam, capsys):
    _, full = full_run
    args = _args(image_dir, full, tiny_gdino, tiny_sam)
    args[args.index("--top-k") + 1] = "5"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "Traceback" not in err


def test_bad_options_exit_2(image_dir, tiny_gdino, tiny_sam, tmp_path, capsys):
    assert main(_args(image_dir, tmp_path / "x", tiny_gdino, tiny_sam, "--format", "coco,tiff")) == 2
    assert main([*_args(image_dir, tmp_path / "y", tiny_gdino, tiny_sam)[:5], "car: a.b"]) == 2
    err = capsys.readouterr().err
    assert "--format" in err and "'.'" in err
