"""The command line end to end on real skimage images with tiny local models."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from grounded.cli import _build_parser, main
from grounded.core.rle import decode_rle

PROMPT = "person . red car . flag . cup"


def _expected_labels(records, size):
    """Label image rebuilt from the JSON: instance i+1 where its mask wins (highest score on top, ties: earliest)."""
    labels = np.zeros(size, np.uint16)
    order = sorted(range(len(records)), key=lambda i: (records[i]["score"], -i))
    for i in order:
        labels[decode_rle(records[i]["segmentation"])] = i + 1
    return labels


def test_segment_writes_valid_files_and_reports_the_corrupt_image(
    tiny_gdino, tiny_sam, image_files, tmp_path, capsys
):
    out = tmp_path / "out"
    files = [image_files["astronaut"], image_files["corrupt"], image_files["coffee"]]
    code = main(
        [
            "segment",
            *map(str, files),
            "--prompt",
            PROMPT,
            "--out",
            str(out),
            "--detector",
            str(tiny_gdino),
            "--segmenter",
            str(tiny_sam),
            "--box-threshold",
            "0.0",
            "--top-k",
            "7",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1  # one image failed, the others completed
    assert "corrupt.jpg" in err and "Traceback" not in err
    assert "2 image(s) processed" in err and "1 failed" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "astronaut.json",
        "astronaut.png",
        "astronaut_labels.png",
        "coffee.json",
        "coffee.png",
        "coffee_labels.png",
    ]
    for name, size in (("astronaut", (512, 512)), ("coffee", (400, 600))):
        doc = json.loads((out / f"{name}.json").read_text())
        assert (doc["image"]["height"], doc["image"]["width"]) == size
        assert doc["classes"] == ["person", "red car", "flag", "cup"]
        records = doc["detections"]
        assert len(records) == 7
        for rec in records:
            assert set(rec) >= {"bbox", "segmentation", "score", "mask_score", "category", "phrase"}
            assert rec["category"] in doc["classes"] and rec["phrase"]
            x, y, w, h = rec["bbox"]
            assert x >= 0 and y >= 0 and x + w <= size[1] + 1e-3 and y + h <= size[0] + 1e-3
        labels = np.array(Image.open(out / f"{name}_labels.png"))
        assert labels.dtype == np.uint16 and labels.shape == size
        assert np.array_equal(
            labels, _expected_labels(records, size)
        )  # the JSON's RLE decodes to the PNG's masks
        overlay = np.array(Image.open(out / f"{name}.png"))
        assert overlay.shape == (*size, 3)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_coco_format_writes_one_file(tiny_gdino, tiny_sam_hq, image_files, tmp_path):
    out = tmp_path / "coco"
    code = main(
        [
            "segment",
            str(image_files["astronaut"]),
            str(image_files["chelsea"]),
            "--prompt",
            PROMPT,
            "--out",
            str(out),
            "--detector",
            str(tiny_gdino),
            "--segmenter",
            str(tiny_sam_hq),
            "--box-threshold",
            "0.0",
            "--top-k",
            "5",
            "--format",
            "coco",
            "-q",
        ]
    )
    assert code == 0
    assert [p.name for p in out.iterdir()] == ["coco.json"]
    coco = COCO(str(out / "coco.json"))
    assert len(coco.getImgIds()) == 2 and len(coco.getAnnIds()) == 10
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["person", "red car", "flag", "cup"]
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[2]))[0]
    assert coco.annToMask(ann).shape == (300, 451)


def test_run_yaml_pipeline_with_settings(tiny_gdino, tiny_sam_hq, image_files, tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "grounded_hq_sam",
            str(image_files["chelsea"]),
            "--prompt",
            "cat",
            "--out",
            str(out),
            "-q",
            "--set",
            f"detector.model={tiny_gdino}",
            "--set",
            f"segmenter.model={tiny_sam_hq}",
            "--set",
            "detector.box_threshold=0.0",
            "--set",
            "detector.top_k=3",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    doc = json.loads((out / "chelsea.json").read_text())
    assert len(doc["detections"]) == 3 and {r["category"] for r in doc["detections"]} == {"cat"}


def test_zero_detections_still_write_files(tiny_gdino, tiny_sam, image_files, tmp_path):
    out = tmp_path / "none"
    code = main(
        [
            "segment",
            str(image_files["chelsea"]),
            "--prompt",
            "cat",
            "--out",
            str(out),
            "--detector",
            str(tiny_gdino),
            "--segmenter",
            str(tiny_sam),
            "--box-threshold",
            "1.0",
            "-q",
        ]
    )
    assert code == 0
    assert json.loads((out / "chelsea.json").read_text())["detections"] == []
    assert not np.array(Image.open(out / "chelsea_labels.png")).any()
    assert np.array_equal(
        np.array(Image.open(out / "chelsea.png")), np.array(Image.open(image_files["chelsea"]))
    )


def test_bad_inputs_exit_2_with_one_line(tiny_gdino, image_files, tmp_path, capsys):
    assert (
        main(
            [
                "segment",
                str(image_files["chelsea"]),
                "--prompt",
                " . ",
                "--out",
                str(tmp_path),
                "--detector",
                str(tiny_gdino),
            ]
        )
        == 2
    )
    assert "empty prompt" in capsys.readouterr().err
    assert (
        main(
            [
                "segment",
                str(image_files["chelsea"]),
                "--prompt",
                "cat",
                "--out",
                str(tmp_path),
                "--detector",
                "./missing-model",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert (
        main(
            [
                "run",
                "no_such_pipeline",
                str(image_files["chelsea"]),
                "--prompt",
                "cat",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no bundled pipeline of that name" in err and "grounded_sam" in err and "grounded_hq_sam" in err


def test_offline_hub_id_gives_one_clear_line_without_traceback(image_files, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grounded.cli",
            "segment",
            str(image_files["chelsea"]),
            "--prompt",
            "cat",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "IDEA-Research/grounding-dino-tiny" in lines[0] and "hf download" in lines[0]


def test_help_documents_every_option():
    parser = _build_parser()
    segment = parser._subparsers._group_actions[0].choices["segment"]
    help_text = segment.format_help()
    for action in segment._actions:
        for flag in action.option_strings:
            assert flag in help_text
        if action.dest != "help":
            assert action.help, f"option {action.option_strings or action.dest} has no help"
    for flag in (
        "--prompt",
        "--out",
        "--format",
        "--detector",
        "--segmenter",
        "--box-threshold",
        "--text-threshold",
        "--top-k",
        "--nms-threshold",
        "--batch-size",
        "--device",
        "--precision",
        "--pipeline",
    ):
        assert flag in help_text


@pytest.mark.parametrize("argv", [["--help"], ["segment", "--help"]])
def test_help_exits_cleanly(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: grounded" in capsys.readouterr().out


def test_skip_existing_resumes_without_redoing_finished_images(
    tiny_gdino, tiny_sam, image_files, tmp_path, capsys
):
    out = tmp_path / "resume"
    common = [
        "--prompt",
        "cat",
        "--out",
        str(out),
        "--detector",
        str(tiny_gdino),
        "--segmenter",
        str(tiny_sam),
        "-q",
    ]
    assert main(["segment", str(image_files["chelsea"]), *common]) == 0
    finished = {"image": {"file_name": "chelsea.png"}, "marker": 1}
    (out / "chelsea.json").write_text(json.dumps(finished))  # a finished image: must not be redone
    (out / "astronaut.json").write_text(json.dumps({"image": {"file_name": "other.jpg"}}))  # another file's
    capsys.readouterr()
    both = [str(image_files["chelsea"]), str(image_files["astronaut"])]
    assert main(["segment", *both, *common, "--skip-existing"]) == 0
    err = capsys.readouterr().err
    assert "1 image(s) processed" in err and "1 skipped" in err
    assert json.loads((out / "chelsea.json").read_text()) == finished
    assert json.loads((out / "astronaut.json").read_text())["image"]["file_name"] == "astronaut.png"
    assert main(["segment", str(image_files["chelsea"]), *common, "--skip-existing", "--format", "coco"]) == 2


def test_outputs_never_overwrite_inputs(tiny_gdino, tiny_sam, tmp_path, capsys):
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.chelsea()).save(folder / "chelsea.png")
    Image.fromarray(data.astronaut()).save(folder / "chelsea_labels.png")
    args = ["--prompt", "cat", "--detector", str(tiny_gdino), "--segmenter", str(tiny_sam), "-q"]
    assert main(["segment", str(folder / "chelsea.png"), "--out", str(folder), *args]) == 2
    assert "would overwrite an input image" in capsys.readouterr().err
    out = tmp_path / "out"
    files = [str(folder / "chelsea.png"), str(folder / "chelsea_labels.png")]
    assert main(["segment", *files, "--out", str(out), *args]) == 0
    assert (out / "chelsea_labels_1.json").is_file()  # not clobbering chelsea's label image
    assert np.array(Image.open(out / "chelsea_labels.png")).dtype == np.uint16


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--box-threshold", "1.5"], "box_threshold and text_threshold must lie in [0, 1]"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 is for GPUs"),
        (["--top-k", "0"], "top_k and batch_size must be at least 1"),
    ],
)
def test_invalid_options_exit_2_with_one_line(
    extra, message, tiny_gdino, tiny_sam, image_files, tmp_path, capsys
):
    argv = ["segment", str(image_files["chelsea"]), "--prompt", "cat", "--out", str(tmp_path / "o")]
    argv += ["--detector", str(tiny_gdino), "--segmenter", str(tiny_sam), "-q", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
