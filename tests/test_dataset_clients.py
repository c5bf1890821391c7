"""Dataset exports read by the libraries users train and label with: pycocotools, torchvision, datumaro,
ultralytics, supervision and label-studio-sdk, each from another working directory.

The masks have known shapes: four coins and the horse (compact), a ring and a mask of three parts, one of them
holed, on a non-square JPEG stored sideways with an EXIF rotation. Every client must find every image and
instance with its class name, give the compact shapes back at IoU >= 0.98 and every box within 1 pixel; the
figures for the ring and the multi-part mask are printed (``-s``) and recorded in the README.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data, measure

from grounded.core.rle import encode_masks
from grounded.tasks import datasets as dx
from grounded.tasks.annotate import name_records

CATEGORIES = ["coin", "horse", "ring", "blob"]
COMPACT = {"coin", "horse"}
FIGURES: dict[tuple[str, str], list[float]] = {}


def _coins() -> list[np.ndarray]:
    filled = ndimage.binary_fill_holes(ndimage.binary_opening(data.coins() > 110, iterations=2))
    labelled = measure.label(filled)
    regions = sorted(measure.regionprops(labelled), key=lambda r: -r.area)[:4]
    return [np.asarray(labelled == r.label) for r in sorted(regions, key=lambda r: r.label)]


def _shapes(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:height, :width]
    d2 = (yy - 40) ** 2 + (xx - 45) ** 2
    ring = (d2 < 30**2) & (d2 >= 16**2)
    blob = np.zeros((height, width), bool)
    blob[80:130, 5:45] = True
    blob[95:115, 15:30] = False  # a hole
    blob[85:100, 55:85] = True  # a second part
    blob[120:124, 60:62] = True  # a third, small
    return ring, blob


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]  # x0, y0, x1, y1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The three images, their true masks and every format exported from them."""
    src = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.coins()).convert("RGB").save(src / "coins.png")
    Image.fromarray(np.where(data.horse()[..., None], 255, 60).astype(np.uint8).repeat(3, 2)).save(
        src / "horse.png"
    )
    stored = np.ascontiguousarray(np.rot90(data.astronaut()[:90, :140], k=1))  # shown 90 wide, 140 high
    raw = Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=1)))  # stored sideways: 140 wide, 90 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    raw.save(src / "rotated.jpg", exif=exif.tobytes(), quality=95)
    ring, blob = _shapes(140, 90)
    truth = {
        "coins.png": [("coin", m) for m in _coins()],
        "horse.png": [("horse", ~data.horse())],
        "rotated.jpg": [("ring", ring), ("blob", blob)],
    }
    records = []
    for file, items in truth.items():
        h, w = items[0][1].shape
        rles = encode_masks(np.stack([m for _, m in items]))
        anns = [
            {
                "category": cat,
                "segmentation": rle,
                "score": round(0.9 - 0.1 * i, 3),
                "mask_score": 0.8,
                "phrase": f"a {cat}",
                "bbox": [0, 0, 1, 1],
                "area": int(m.sum()),
            }
            for i, ((cat, m), rle) in enumerate(zip(items, rles, strict=True))
        ]
        records.append({"file": file, "height": h, "width": w, "annotations": anns})
    name_records(records)
    assignment = {"coins.png": "train", "horse.png": "val", "rotated.jpg": "train"}
    sources = {f: src / f for f in truth}
    out = tmp_path_factory.mktemp("datasets")
    report = dx.export_records(out, records, CATEGORIES, dx.FORMATS, sources, assignment)
    return {"out": out, "truth": truth, "records": records, "report": report, "split": assignment, "src": src}


@pytest.fixture(autouse=True)
def _undo_ultralytics_patches():
    """Importing ultralytics replaces ``PIL.Image.open`` (which then tries to install pi-heif for any file
    PIL cannot identify) and ``torch.save`` for the whole process: put them back for the other tests."""
    import torch

    saved = Image.open, torch.save
    yield
    Image.open, torch.save = saved


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Every client runs from a working directory that is not the dataset's."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return dx.mask_iou(np.asarray(a, bool), np.asarray(b, bool))


def _check(client: str, cat: str, got_mask: np.ndarray, truth: np.ndarray, got_box=None, compact_iou=0.98):
    iou = _iou(got_mask, truth)
    FIGURES.setdefault((client, "compact" if cat in COMPACT else cat), []).append(iou)
    if cat in COMPACT:
        assert iou >= compact_iou, (client, cat, iou)
    else:
        assert iou >= 0.9, (client, cat, iou)
    if got_box is not None:
        assert np.abs(np.asarray(got_box, float) - _box(truth)).max() <= 1.0, (
            client,
            cat,
            got_box,
            _box(truth),
        )


def _by_image(dataset):
    return {Path(f).stem: items for f, items in dataset["truth"].items()}


# ---------------------------------------------------------------------- COCO
def test_validation_report(dataset):
    report = dataset["report"]
    n = sum(len(items) for items in dataset["truth"].values())
    assert n == 7  # four coins, the horse, the ring and the blob
    assert report["coco"] == {"images": 3, "instances": 7, "min_iou": 1.0, "mean_iou": 1.0}
    assert report["voc"] == {"images": 3, "instances": 7, "exact": True}
    assert report["label-studio"] == {"images": 3, "instances": 7, "min_iou": 1.0, "mean_iou": 1.0}
    assert report["yolo"]["instances"] == 7 and report["yolo"]["min_iou"] >= 0.97


def test_pycocotools_reads_the_coco_dataset(dataset, elsewhere):
    from pycocotools.coco import COCO

    root = dataset["out"] / "coco"
    truth = _by_image(dataset)
    seen = 0
    for split in ("train", "val"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CATEGORIES
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(root / "images" / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"])
                assert im.getexif().get(0x0112, 1) == 1  # written in its displayed orientation
            items = truth[Path(img["file_name"]).stem]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            assert [coco.cats[a["category_id"]]["name"] for a in anns] == [c for c, _ in items]
            for ann, (cat, mask) in zip(anns, items, strict=True):
                assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"], list)
                assert set(ann["attributes"]) == {"score", "mask_score", "phrase"}
                assert "score" not in ann
                x, y, w, h = ann["bbox"]
                _check("pycocotools", cat, coco.annToMask(ann), mask, [x, y, x + w, y + h], compact_iou=0.999)
                assert _iou(coco.annToMask(ann), mask) == 1.0  # corner-convention polygons are exact here
                seen += 1
    assert seen == 7


def test_torchvision_coco_detection_masks_fit_their_images(dataset, elsewhere):
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    root = dataset["out"] / "coco"
    truth = _by_image(dataset)
    for split in ("train", "val"):
        with contextlib.redirect_stdout(io.StringIO()):
            ds = wrap_dataset_for_transforms_v2(
                CocoDetection(
                    str(root / "images" / split), str(root / "annotations" / f"instances_{split}.json")
                ),
                target_keys=("image_id", "boxes", "masks", "labels"),
            )
        for k in range(len(ds)):
            image, target = ds[k]
            name = Path(ds.coco.imgs[target["image_id"]]["file_name"]).stem
            items = truth[name]
            assert tuple(target["masks"].shape) == (len(items), image.height, image.width)
            assert [CATEGORIES[int(c) - 1] for c in target["labels"]] == [c for c, _ in items]
            for mask, box, (cat, true) in zip(target["masks"], target["boxes"], items, strict=True):
                _check("torchvision", cat, mask.numpy(), true, box.tolist())


def test_datumaro_imports_coco_with_attributes(dataset, elsewhere):
    import datumaro as dm
    from datumaro.components.annotation import AnnotationType
    from datumaro.plugins.validators import SegmentationValidator

    truth = _by_image(dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from the import
        ds = dm.Dataset.import_from(str(dataset["out"] / "coco"), "coco_instances")
    labels = ds.categories()[AnnotationType.label]
    assert [lab.name for lab in labels] == CATEGORIES
    assert sorted(ds.subsets()) == ["train", "val"]
    assert len(ds) == 3
    for item in ds:
        items = truth[item.id]
        assert item.media.size == items[0][1].shape  # (height, width)
        assert item.media.has_data
        polys = [a for a in item.annotations if a.type == AnnotationType.polygon]
        groups: dict[int, list] = {}
        for p in polys:
            groups.setdefault(p.group, []).append(p)
        ordered = [groups[k] for k in sorted(groups)]  # a group is its COCO annotation id
        assert [labels[g[0].label].name for g in ordered] == [c for c, _ in items]
        for g, (cat, mask) in zip(ordered, items, strict=True):
            assert {"score", "mask_score", "phrase"} <= set(g[0].attributes)
            assert g[0].attributes["phrase"] == f"a {cat}"
            h, w = mask.shape
            _check("datumaro", cat, dx.polygons_to_mask([p.points for p in g], h, w), mask)
    # datumaro's COCO importer declares no attributes, not even its own is_crowd: declared, the validator is clean
    for lab in labels:
        lab.attributes.update({"score", "mask_score", "phrase", "is_crowd"})
    reports = SegmentationValidator().validate(ds)["validation_reports"]
    kinds = {r["anomaly_type"] for r in reports}
    assert not kinds & {"UndefinedAttribute", "UndefinedLabel", "MissingAnnotation", "MissingAttribute"}, (
        reports
    )


# ---------------------------------------------------------------------- YOLO
def test_ultralytics_finds_the_dataset_from_any_directory(dataset, elsewhere):
    from ultralytics.data.utils import check_det_dataset, polygon2mask

    yaml_path = dataset["out"] / "yolo" / "data.yaml"
    assert "path" not in yaml_path.read_text()
    info = check_det_dataset(str(yaml_path), autodownload=False)
    assert info["names"] == dict(enumerate(CATEGORIES)) and info["nc"] == 4
    assert Path(info["train"]) == (dataset["out"] / "yolo" / "images" / "train").resolve()
    assert Path(info["val"]).is_dir()
    truth = _by_image(dataset)
    for split, expected in (("train", {"coins", "rotated"}), ("val", {"horse"})):
        images = sorted(Path(info[split]).iterdir())
        assert {p.stem for p in images} == expected
        for image in images:
            with Image.open(image) as im:
                w, h = im.size
            lines = (
                (image.parent.parent.parent / "labels" / split / f"{image.stem}.txt").read_text().splitlines()
            )
            items = truth[image.stem]
            assert [info["names"][int(line.split()[0])] for line in lines] == [c for c, _ in items]
            for line, (cat, mask) in zip(lines, items, strict=True):
                xy = np.asarray(line.split()[1:], float).reshape(-1, 2) * [w, h]
                got = polygon2mask((h, w), [xy.reshape(-1)], color=1, downsample_ratio=1)
                box = [*xy.min(0), *(xy.max(0) + 1)]  # ultralytics' box of a segment, as pixel squares
                _check("ultralytics", cat, got, mask, box)


def test_ultralytics_dataset_loader_reads_every_label(dataset, elsewhere, caplog):
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(dataset["out"] / "yolo" / "data.yaml"), autodownload=False)
    with caplog.at_level(logging.WARNING):
        ds = YOLODataset(img_path=info["train"], data=info, task="segment", augment=False, imgsz=256)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    counts = {Path(lab["im_file"]).stem: (len(lab["cls"]), len(lab["segments"])) for lab in ds.labels}
    assert counts == {"coins": (4, 4), "rotated": (2, 2)}
    sizes = {Path(lab["im_file"]).stem: lab["shape"] for lab in ds.labels}
    assert sizes == {"coins": (303, 384), "rotated": (140, 90)}


def test_datumaro_yolo_importers_read_boxes_only(dataset, elsewhere):
    """datumaro's ``yolo`` importer (darknet's ``obj.data`` / ``obj.names``, or ultralytics' ``data.yaml``:
    its ``yolo_ultralytics`` source) reads detection labels only: an annotation file is taken when its first
    line has 5 fields (class, box centre and size), so a YOLO segmentation dataset (ultralytics' own layout,
    which ultralytics and supervision read above) has none for it. The limit is datumaro's: the README points
    datumaro users to the COCO or VOC export, which it reads exactly (tests above); the same dataset's
    instances as boxes are read, from the same ``data.yaml``, from another directory."""
    import datumaro as dm
    from datumaro.components.errors import DatasetImportError, DatasetNotFoundError, NoMatchingFormatsError
    from datumaro.plugins.data_formats.yolo.importer import _YoloUltralyticsImporter

    root = dataset["out"] / "yolo"
    label = root / "labels" / "train" / "coins.txt"
    # datumaro's own check of a label file, on one of ours: a segment is refused
    with label.open() as fp, pytest.raises(DatasetImportError, match="5 fields"):
        _YoloUltralyticsImporter._check_ann_file_impl(fp)
    with pytest.raises(NoMatchingFormatsError):
        dm.Dataset.detect(str(root))
    with pytest.raises(DatasetNotFoundError):
        dm.Dataset.import_from(str(root), "yolo")
    # the same instances as boxes (what datumaro's YOLO formats hold) are read, from the same data.yaml
    boxes = elsewhere / "boxes"
    (boxes / "images").mkdir(parents=True)
    (boxes / "data.yaml").write_bytes((root / "data.yaml").read_bytes())
    truth = _by_image(dataset)
    for split, names in (("train", ("coins", "rotated")), ("val", ("horse",))):
        (boxes / "images" / split).mkdir()
        (boxes / "labels" / split).mkdir(parents=True)
        for name in names:
            image = next((root / "images" / split).glob(f"{name}.*"))
            (boxes / "images" / split / image.name).write_bytes(image.read_bytes())
            lines = []
            for line in (root / "labels" / split / f"{name}.txt").read_text().splitlines():
                xy = np.asarray(line.split()[1:], float).reshape(-1, 2)
                (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
                lines.append(
                    f"{line.split()[0]} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}"
                )
            (boxes / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from the import
        ds = dm.Dataset.import_from(str(boxes), "yolo")
    from datumaro.components.annotation import AnnotationType

    assert [lab.name for lab in ds.categories()[AnnotationType.label]] == CATEGORIES
    assert sorted(ds.subsets()) == ["train", "val"] and len(ds) == 3
    for item in ds:
        items = truth[item.id]
        assert item.media.size == items[0][1].shape
        assert [CATEGORIES[a.label] for a in item.annotations] == [c for c, _ in items]
        for ann, (cat, mask) in zip(item.annotations, items, strict=True):
            x, y, w, h = ann.get_bbox()
            x0, y0, x1, y1 = _box(mask)  # pixel squares; the YOLO vertices are pixel centres (1 px less)
            assert np.abs(np.array([x, y, x + w, y + h]) - [x0, y0, x1 - 1, y1 - 1]).max() <= 0.05, (cat, ann)


# ---------------------------------------------------------------------- supervision
def _supervision_datasets(out: Path):
    import supervision as sv

    for split in ("train", "val"):
        yield (
            "coco",
            sv.DetectionDataset.from_coco(
                str(out / "coco" / "images" / split),
                str(out / "coco" / "annotations" / f"instances_{split}.json"),
                force_masks=True,
            ),
        )
        yield (
            "yolo",
            sv.DetectionDataset.from_yolo(
                str(out / "yolo" / "images" / split),
                str(out / "yolo" / "labels" / split),
                str(out / "yolo" / "data.yaml"),
                force_masks=True,
            ),
        )
    yield (
        "voc",
        sv.DetectionDataset.from_pascal_voc(
            str(out / "voc" / "JPEGImages"), str(out / "voc" / "Annotations"), force_masks=True
        ),
    )


def test_supervision_reads_coco_yolo_and_voc(dataset, elsewhere):
    truth = _by_image(dataset)
    seen: dict[str, set[str]] = {}
    for fmt, ds in _supervision_datasets(dataset["out"]):
        for path, image, det in ds:
            seen.setdefault(fmt, set()).add(Path(path).stem)
            items = truth[Path(path).stem]
            assert [ds.classes[c] for c in det.class_id] == [c for c, _ in items], fmt
            assert det.mask.shape[1:] == image.shape[:2]
            for mask, box, (cat, true) in zip(det.mask, det.xyxy, items, strict=True):
                # supervision fills COCO polygons at rounded vertices (pixel centres): one pixel more on the
                # right and bottom edges than pycocotools' reading, which defines COCO's convention (README)
                _check(
                    f"supervision-{fmt}", cat, mask, true, box, compact_iou=0.93 if fmt == "coco" else 0.98
                )
    assert seen == {fmt: {"coins", "horse", "rotated"} for fmt in ("coco", "yolo", "voc")}


# ---------------------------------------------------------------------- VOC
def test_datumaro_imports_voc_with_the_labelmap(dataset, elsewhere):
    import datumaro as dm
    from datumaro.components.annotation import AnnotationType

    truth = _by_image(dataset)
    ds = dm.Dataset.import_from(str(dataset["out"] / "voc"), "voc", coordinate_mode="voc-one-based")
    labels = ds.categories()[AnnotationType.label]
    assert [lab.name for lab in labels] == ["background", *CATEGORIES]  # not "aeroplane"
    assert len(ds) == 3 and sorted(ds.subsets()) == ["train", "val"]
    for item in ds:
        items = truth[item.id]
        masks = [a for a in item.annotations if a.type == AnnotationType.mask]
        boxes = [a for a in item.annotations if a.type == AnnotationType.bbox]
        assert [labels[m.label].name for m in masks] == [c for c, _ in items]
        assert [labels[b.label].name for b in boxes] == [c for c, _ in items]
        for m, b, (cat, true) in zip(masks, boxes, items, strict=True):
            x, y, w, h = b.get_bbox()
            _check("datumaro-voc", cat, m.image, true, [x, y, x + w, y + h], compact_iou=0.999)


# ---------------------------------------------------------------------- Label Studio
def test_label_studio_tasks_validate_and_decode(dataset, elsewhere):
    from label_studio_sdk.converter import brush
    from label_studio_sdk.label_interface import LabelInterface

    from grounded.core.label_studio import region_mask

    root = dataset["out"] / "label-studio"
    tasks = json.loads((root / "tasks.json").read_text())
    interface = LabelInterface((root / "label_config.xml").read_text())
    truth = {f: items for f, items in dataset["truth"].items()}
    assert [t["data"]["file"] for t in tasks] == list(truth)
    for task in tasks:
        prediction = task["predictions"][0]
        assert interface.validate_prediction(prediction), interface.validate_prediction(
            prediction, return_errors=True
        )
        name = task["data"]["image"].rsplit("/", 1)[1]
        assert (root / "images" / name).is_file()
        items = truth[task["data"]["file"]]
        assert [r["value"]["brushlabels"] for r in prediction["result"]] == [[c] for c, _ in items]
        for region, (cat, true) in zip(prediction["result"], items, strict=True):
            assert (region["original_height"], region["original_width"]) == true.shape
            h, w = true.shape
            decoded = (
                np.reshape(brush.decode_rle(region["value"]["rle"]), (h, w, 4))[:, :, 3] > 0
            )  # the SDK's
            _check("label-studio-brush", cat, decoded, true, compact_iou=1.0)
            assert np.array_equal(region_mask(region), decoded)  # the export's own check reads the same


def test_label_studio_converter_imports_the_coco_polygons(dataset, elsewhere):
    from label_studio_sdk.converter.imports.coco import convert_coco_to_ls

    truth = _by_image(dataset)
    out = elsewhere / "ls.json"
    with contextlib.redirect_stdout(io.StringIO()):
        convert_coco_to_ls(str(dataset["out"] / "coco" / "annotations" / "instances_train.json"), str(out))
    tasks = json.loads(out.read_text())
    assert len(tasks) == 2
    for task in tasks:
        name = Path(task["data"]["image"].split("=", 1)[1]).stem
        regions = task["annotations"][0]["result"]
        polys = [r for r in regions if r["type"] == "polygonlabels"]
        rects = [r for r in regions if r["type"] == "rectanglelabels"]
        assert [r["value"]["rectanglelabels"][0] for r in rects] == [c for c, _ in truth[name]]
        for rect, (_, true) in zip(rects, truth[name], strict=True):
            h, w = true.shape
            v = rect["value"]
            box = [
                v["x"] * w / 100,
                v["y"] * h / 100,
                (v["x"] + v["width"]) * w / 100,
                (v["y"] + v["height"]) * h / 100,
            ]
            assert np.abs(np.asarray(box) - _box(true)).max() <= 1.0
        assert {p["value"]["polygonlabels"][0] for p in polys} == {c for c, _ in truth[name]}


# ---------------------------------------------------------------------- convert-dataset
def test_convert_dataset_rewrites_a_coco_dataset(dataset, elsewhere, capsys):
    from grounded.cli import main

    out = elsewhere / "converted"
    code = main(
        ["convert-dataset", str(dataset["out"] / "coco"), "--to", "yolo,voc,coco", "--out", str(out), "--rle"]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "validation.json").read_text())
    assert report["coco"] == {"images": 3, "instances": 7, "min_iou": 1.0, "mean_iou": 1.0}
    assert report["voc"]["exact"] and report["yolo"]["min_iou"] >= 0.97
    doc = json.loads((out / "coco" / "annotations" / "instances_train.json").read_text())
    assert all(a["iscrowd"] == 1 and isinstance(a["segmentation"], dict) for a in doc["annotations"])
    assert sorted(os.listdir(out / "yolo" / "images" / "train")) == ["coins.png", "rotated.jpg"]
    # the converted YOLO labels are those of the direct export
    for name in ("coins", "rotated"):
        direct = (dataset["out"] / "yolo" / "labels" / "train" / f"{name}.txt").read_text()
        assert (out / "yolo" / "labels" / "train" / f"{name}.txt").read_text() == direct


def test_convert_dataset_fixes_a_run_coco_json_of_an_exif_image(dataset, elsewhere, capsys):
    """A ``segment --format coco`` file names the original (sideways) JPEG with its displayed size: the
    converted dataset holds the image rotated, and torchvision's masks fit it."""
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    from grounded.cli import main

    records = [r for r in dataset["records"] if r["file"] == "rotated.jpg"]
    doc = dx.coco_document(records, CATEGORIES, rle=True)
    (elsewhere / "coco.json").write_text(json.dumps(doc))
    with Image.open(dataset["src"] / "rotated.jpg") as im:
        assert im.size == (140, 90) and doc["images"][0]["width"] == 90  # stored sideways
    out = elsewhere / "fixed"
    args = ["convert-dataset", str(elsewhere / "coco.json"), "--images", str(dataset["src"]), "--to", "coco"]
    assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
    root = out / "coco"
    with contextlib.redirect_stdout(io.StringIO()):
        ds = wrap_dataset_for_transforms_v2(
            CocoDetection(str(root / "images" / "train"), str(root / "annotations" / "instances_train.json")),
            target_keys=("masks", "labels"),
        )
    image, target = ds[0]
    assert image.size == (90, 140) and tuple(target["masks"].shape) == (2, 140, 90)
    for mask, (_, true) in zip(target["masks"], dataset["truth"]["rotated.jpg"], strict=True):
        assert _iou(mask.numpy(), true) == 1.0


def test_segment_coco_run_becomes_a_dataset_datumaro_imports(tiny_gdino, tiny_sam, elsewhere, capsys):
    """``grounded segment --format coco`` writes the run's results (one ``coco.json`` naming the images where
    they are, ``score`` top-level for ``loadRes``); ``grounded convert-dataset`` (the documented way, the
    same writer as ``annotate``) lays it out as a COCO dataset that datumaro imports from another directory,
    every mask the run's own (random-weight masks: ragged, many parts and holes)."""
    import datumaro as dm
    from datumaro.components.annotation import AnnotationType
    from pycocotools import mask as mask_utils

    from grounded.cli import main

    photos = elsewhere / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()[::4, ::4]).save(photos / "astronaut.png")
    Image.fromarray(data.chelsea()[::3, ::3]).save(photos / "chelsea.jpg")
    args = ["segment", str(photos / "astronaut.png"), str(photos / "chelsea.jpg"), "--prompt", "person . cat"]
    args += ["--out", str(elsewhere / "run"), "--detector", str(tiny_gdino), "--segmenter", str(tiny_sam)]
    assert main([*args, "--box-threshold", "0.0", "--top-k", "3", "--format", "coco", "-q"]) == 0
    run = json.loads((elsewhere / "run" / "coco.json").read_text())
    assert sorted(os.listdir(elsewhere / "run")) == ["coco.json"]  # the results, not a dataset
    out = elsewhere / "dataset"
    convert = ["convert-dataset", str(elsewhere / "run" / "coco.json"), "--images", str(photos)]
    assert main([*convert, "--to", "coco", "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "validation.json").read_text())["coco"]["min_iou"] == 1.0
    masks = {}
    for ann in run["annotations"]:
        info = next(im for im in run["images"] if im["id"] == ann["image_id"])
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        masks.setdefault(Path(info["file_name"]).stem, []).append(mask_utils.decode(rle).astype(bool))
    os.chdir(elsewhere / "photos")  # yet another working directory
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = dm.Dataset.import_from(str(out / "coco"), "coco_instances")
    labels = ds.categories()[AnnotationType.label]
    assert [lab.name for lab in labels] == [c["name"] for c in run["categories"]]
    assert len(ds) == 2 and all(item.media.has_data for item in ds)
    n = 0
    for item in ds:
        groups: dict[int, list] = {}
        for p in item.annotations:
            groups.setdefault(p.group, []).append(p)
        expected = [m for m in masks.get(item.id, []) if m.any()]
        assert len(groups) == len(expected)
        for key, truth in zip(sorted(groups), expected, strict=True):
            h, w = truth.shape
            assert item.media.size == (h, w)
            assert _iou(dx.polygons_to_mask([p.points for p in groups[key]], h, w), truth) == 1.0
            n += 1
    assert n == sum(m.any() for ms in masks.values() for m in ms) and n >= 4


def test_convert_dataset_refuses_bad_inputs(dataset, elsewhere, capsys):
    from grounded.cli import main

    assert (
        main(["convert-dataset", str(elsewhere / "missing"), "--to", "yolo", "--out", str(elsewhere / "o")])
        == 2
    )
    assert (
        main(["convert-dataset", str(dataset["out"] / "coco"), "--to", "tiff", "--out", str(elsewhere / "o")])
        == 2
    )
    src = dataset["out"] / "coco"
    assert main(["convert-dataset", str(src), "--to", "coco", "--out", str(dataset["out"])]) == 2
    err = capsys.readouterr().err
    assert "no COCO file" in err and "--format" in err and "holds the input" in err and "Traceback" not in err


def test_print_round_trip_figures():
    """The figures of this module's clients (run with -s), as the README's table lists them."""
    for (client, shape), ious in sorted(FIGURES.items()):
        print(
            f"ROUND TRIP {client:22s} {shape:8s} n={len(ious):2d} min IoU {min(ious):.4f} mean {np.mean(ious):.4f}"
        )


def _voc_xml_by_elementtree(record, file_name: str) -> bytes:
    """The VOC annotation as ElementTree writes the tree (the writer's reference: it writes the text itself)."""
    from xml.etree import ElementTree as ET

    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", record["width"]), ("height", record["height"]), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    kept = [
        (a, m) for a, m in ((a, dx.decode_rle(a["segmentation"])) for a in record["annotations"]) if m.any()
    ]
    for i in sorted(range(len(kept)), key=lambda i: (-kept[i][0]["score"], i)):
        ann, mask = kept[i]
        obj = ET.SubElement(root, "object")
        for tag, text in (
            ("name", ann["category"]),
            ("pose", "Unspecified"),
            ("truncated", "0"),
            ("difficult", "0"),
        ):
            ET.SubElement(obj, tag).text = text
        x, y, w, h = (int(v) for v in dx.mask_box(mask))
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, tag).text = str(value)
        polygon = ET.SubElement(obj, "polygon")
        for k, (px, py) in enumerate(dx.yolo_polygon(mask).tolist(), start=1):
            ET.SubElement(polygon, f"x{k}").text = f"{px + 1:g}"
            ET.SubElement(polygon, f"y{k}").text = f"{py + 1:g}"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def test_voc_annotation_text_is_what_elementtree_writes():
    """_voc_xml writes the XML text itself (a ragged mask's polygon is two elements a vertex): the same bytes as
    ElementTree's, with names that need escaping, several objects in score order and an empty mask left out."""
    coin, horse = _coins()[0], ~data.horse()
    ragged = ndimage.gaussian_filter(np.random.default_rng(2).standard_normal(horse.shape), 2.0) > 0
    masks = [
        horse,
        ragged,
        np.pad(coin, ((0, horse.shape[0] - coin.shape[0]), (0, horse.shape[1] - coin.shape[1]))),
    ]
    masks.append(np.zeros_like(horse))
    names = ["horse & <rider>", "fölíage", "coin", "nothing"]
    anns = [
        {"category": n, "score": s, "segmentation": r}
        for n, s, r in zip(names, (0.5, 0.9, 0.7, 0.8), encode_masks(np.stack(masks)), strict=True)
    ]
    h, w = horse.shape
    record = {"file": "a&b.png", "name": "a&b", "height": h, "width": w, "annotations": anns}
    assert dx._voc_xml(record, "a&b.png") == _voc_xml_by_elementtree(record, "a&b.png")


def test_voc_object_names_are_read_past_the_polygons_and_bad_xml_is_refused(tmp_path):
    good = tmp_path / "a.xml"
    good.write_text(
        "<annotation><object><name>a &amp; b</name><polygon><x1>1</x1><y1>2</y1></polygon></object>"
        "<object><name>c</name><polygon /></object><object><name>d</name><polygon></polygon></object></annotation>"
    )
    assert dx._voc_object_names(good) == ["a & b", "c", "d"]
    bad = tmp_path / "b.xml"
    bad.write_text("<annotation><object><name>a</name><polygon><x1>1</y1></polygon></object></annotation>")
    with pytest.raises(ValueError, match="not well-formed"):
        dx._voc_object_names(bad)
