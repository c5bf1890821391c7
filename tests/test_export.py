"""Result export: atomic writes, PNG encoding, label images, overlays, per-image JSON and run-level COCO."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from skimage import data

from grounded.core.detections import Detections
from grounded.core.files import atomic_write_bytes, atomic_write_text, encode_png
from grounded.core.images import LoadedImage, load_image
from grounded.core.rle import decode_rle
from grounded.tasks.export import (
    CocoWriter,
    image_json,
    label_image,
    overlay_image,
    write_image_results,
)


def _rect(size: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _detections(
    masks: list[torch.Tensor] | None,
    scores: list[float],
    class_ids: list[int],
    classes: tuple[str, ...],
    size: tuple[int, int],
    boxes: list[list[float]] | None = None,
) -> Detections:
    """Detections with boxes tight around the masks (unless given)."""
    if boxes is None:
        assert masks is not None
        boxes = []
        for m in masks:
            ys, xs = torch.nonzero(m, as_tuple=True)
            boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        scores=torch.tensor(scores, dtype=torch.float32),
        class_ids=torch.tensor(class_ids, dtype=torch.int64),
        classes=classes,
        phrases=tuple(f"a {classes[c]}" for c in class_ids),
        image_size=size,
        masks=None
        if masks is None
        else torch.stack(masks)
        if masks
        else torch.zeros((0, *size), dtype=torch.bool),
        mask_scores=None if masks is None else torch.full((len(scores),), 0.75),
    )


@pytest.fixture
def coffee() -> LoadedImage:
    return load_image(data.coffee()[:200, :300], name="coffee")


# ---------------------------------------------------------------------- atomic writes
def test_atomic_write_creates_and_replaces_without_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second \xff")
    assert target.read_bytes() == b"second \xff"
    assert os.listdir(tmp_path) == ["result.json"]
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_atomic_write_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "result.png"
    target.write_bytes(b"old")

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new" * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["result.png"]


def test_atomic_write_into_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "nope" / "x.json", "{}")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- PNG encoding and label images
def test_uint16_png_round_trips_exactly() -> None:
    values = np.random.default_rng(0).integers(0, 65536, size=(17, 23), dtype=np.uint16)
    values[0, :3] = [0, 256, 65535]
    with Image.open(io.BytesIO(encode_png(values))) as image:
        decoded = np.asarray(image)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, values)
    assert decoded.max() > 255


def test_rgb_png_round_trips_and_bad_arrays_are_rejected() -> None:
    rgb = data.rocket()[:20, :30]
    with Image.open(io.BytesIO(encode_png(rgb))) as image:
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), rgb)
    with pytest.raises(ValueError, match="encode_png"):
        encode_png(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="encode_png"):
        encode_png(np.zeros((4, 4, 3), np.uint16))


def test_label_image_higher_score_wins_overlaps() -> None:
    size = (10, 12)
    low, high = _rect(size, 0, 6, 0, 6), _rect(size, 3, 9, 3, 9)
    det = _detections([low, high], [0.3, 0.9], [0, 0], ("cup",), size)

    labels = label_image(det)

    assert labels.dtype == np.uint16 and labels.shape == size
    assert (labels[3:6, 3:6] == 2).all()  # overlap: detection 1 (score 0.9)
    assert (labels[0:3, 0:6] == 1).all() and (labels[3:6, 0:3] == 1).all()
    assert (labels[6:9, 3:9] == 2).all()
    assert labels[9:, :].max() == 0 and labels[:, 9:].max() == 0
    # reversing the order of detections: still the 0.9 detection (now index 0 -> value 1) wins
    assert (label_image(det[[1, 0]])[3:6, 3:6] == 1).all()
    # equal scores: the earlier detection wins
    tie = _detections([low, high], [0.5, 0.5], [0, 0], ("cup",), size)
    assert (label_image(tie)[3:6, 3:6] == 1).all()


def test_label_image_needs_masks() -> None:
    det = _detections(None, [0.5], [0], ("cup",), (8, 8), boxes=[[0, 0, 4, 4]])
    with pytest.raises(ValueError, match="masks"):
        label_image(det)


# ---------------------------------------------------------------------- overlays
def test_overlay_without_detections_is_an_unchanged_copy(coffee: LoadedImage) -> None:
    out = overlay_image(coffee, Detections.empty(coffee.size, classes=("cup",)))
    np.testing.assert_array_equal(out, coffee.pixels)
    assert out is not coffee.pixels and out.dtype == np.uint8


def test_overlay_draws_inside_and_leaves_far_pixels_alone(coffee: LoadedImage) -> None:
    det = _detections([_rect(coffee.size, 120, 180, 200, 280)], [0.87], [0], ("cup",), coffee.size)
    out = overlay_image(coffee, det)

    assert out.shape == coffee.pixels.shape and out.dtype == np.uint8
    inside = (slice(135, 170), slice(215, 265))  # inside the mask, away from the box outline
    assert (out[inside] != coffee.pixels[inside]).any(axis=2).all()
    far = np.ones(coffee.size, dtype=bool)
    far[60:190, 180:290] = False  # box, outline and the label above it
    np.testing.assert_array_equal(out[far], coffee.pixels[far])
    np.testing.assert_array_equal(coffee.pixels, data.coffee()[:200, :300])  # input untouched

    boxes_only = overlay_image(
        coffee, _detections(None, [0.87], [0], ("cup",), coffee.size, [[200, 120, 280, 180]])
    )
    np.testing.assert_array_equal(boxes_only[inside], coffee.pixels[inside])
    assert (boxes_only[150, 199:202] != coffee.pixels[150, 199:202]).any()  # left edge of the box


def test_overlay_rejects_detections_of_another_size(coffee: LoadedImage) -> None:
    with pytest.raises(ValueError, match="size"):
        overlay_image(coffee, Detections.empty((10, 10)))


# ---------------------------------------------------------------------- per-image results
def _two_cups(size: tuple[int, int]) -> Detections:
    ring = _rect(size, 20, 80, 30, 120)
    ring[40:60, 50:100] = False  # a mask with a hole
    return _detections([ring, _rect(size, 100, 150, 150, 260)], [0.9, 0.6], [0, 1], ("cup", "saucer"), size)


def test_image_json_rle_decodes_to_the_masks(coffee: LoadedImage, tmp_path: Path) -> None:
    det = _two_cups(coffee.size)
    doc = json.loads(json.dumps(image_json(coffee, det)))

    assert doc["image"] == {"file_name": "coffee", "height": 200, "width": 300}
    assert doc["classes"] == ["cup", "saucer"]
    assert [d["phrase"] for d in doc["detections"]] == ["a cup", "a saucer"]
    for record, mask in zip(doc["detections"], det.masks, strict=True):  # type: ignore[arg-type]
        np.testing.assert_array_equal(decode_rle(record["segmentation"]), mask.numpy())
        assert record["area"] == int(mask.sum())

    path = tmp_path / "cup.png"
    Image.fromarray(data.coffee()[:200, :300]).save(path)
    assert image_json(load_image(path), det)["image"]["file_name"] == "cup.png"


def test_write_image_results(coffee: LoadedImage, tmp_path: Path) -> None:
    det = _two_cups(coffee.size)
    out_dir = tmp_path / "out" / "nested"

    paths = write_image_results(out_dir, "coffee_1", coffee, det)

    # the JSON is written last: its presence marks the image as complete
    assert [p.name for p in paths] == ["coffee_1.png", "coffee_1_labels.png", "coffee_1.json"]
    assert sorted(os.listdir(out_dir)) == sorted(p.name for p in paths)
    assert json.loads(paths[2].read_text()) == json.loads(json.dumps(image_json(coffee, det)))
    with Image.open(paths[0]) as overlay:
        np.testing.assert_array_equal(np.asarray(overlay), overlay_image(coffee, det))
    with Image.open(paths[1]) as labels:
        np.testing.assert_array_equal(np.asarray(labels), label_image(det))

    boxes_only = _detections(None, [0.5], [0], ("cup",), coffee.size, [[10, 10, 50, 50]])
    assert [p.name for p in write_image_results(out_dir, "boxes", coffee, boxes_only)] == [
        "boxes.png",
        "boxes.json",
    ]
    with pytest.raises(ValueError, match="name"):
        write_image_results(out_dir, "../escape", coffee, det)


# ---------------------------------------------------------------------- COCO
def test_coco_writer_merges_categories_by_name_and_loads_in_pycocotools(
    coffee: LoadedImage, tmp_path: Path
) -> None:
    rocket = load_image(data.rocket()[:120, :160], name="rocket")
    first = _two_cups(coffee.size)  # classes ("cup", "saucer")
    second = _detections(  # classes ("rocket", "cup"): "cup" must keep run-level id 1
        [_rect(rocket.size, 10, 100, 20, 60), _rect(rocket.size, 50, 90, 100, 150)],
        [0.8, 0.4],
        [1, 0],
        ("rocket", "cup"),
        rocket.size,
    )
    writer = CocoWriter()
    assert writer.add(coffee, first) == 1
    assert writer.add(rocket, second) == 2
    path = tmp_path / "run" / "coco.json"
    writer.write(path)

    doc = json.loads(path.read_text())
    assert doc["categories"] == [
        {"id": 1, "name": "cup"},
        {"id": 2, "name": "saucer"},
        {"id": 3, "name": "rocket"},
    ]
    assert [im["id"] for im in doc["images"]] == [1, 2]
    assert doc["images"][1] == {"id": 2, "file_name": "rocket", "height": 120, "width": 160}
    anns = doc["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3, 4]
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(1, 1), (1, 2), (2, 1), (2, 3)]
    assert all(a["iscrowd"] == 1 for a in anns)  # RLE masks: COCO's crowd form
    assert anns[0]["area"] == int(first.masks[0].sum()) == 60 * 90 - 20 * 50  # type: ignore[index]
    assert anns[2]["bbox"] == [20.0, 10.0, 40.0, 90.0]
    assert isinstance(anns[0]["segmentation"]["counts"], str)
    assert anns[0]["attributes"] == {"phrase": "a cup", "mask_score": 0.75} and anns[0]["score"] == 0.9

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        np.testing.assert_array_equal(gt.annToMask(gt.anns[1]), first.masks[0].numpy())  # type: ignore[index]
        assert gt.getCatIds(catNms=["cup"]) == [1]
        results = gt.loadRes(json.loads(json.dumps(anns)))  # the top-level score is what loadRes reads
    assert len(results.anns) == 4


def test_image_json_ids_and_boxes_match_the_coco_dataset(coffee: LoadedImage) -> None:
    """NAME.json's detections score against the COCO dataset of the same masks: 1-based ids, mask boxes."""
    from grounded.tasks.datasets import coco_document

    det = _detections(
        [_rect(coffee.size, 20, 80, 30, 120), _rect(coffee.size, 100, 150, 150, 260)],
        [0.9, 0.6],
        [0, 1],
        ("cup", "saucer"),
        coffee.size,
        [[25.0, 15.0, 125.0, 85.0], [140.0, 90.0, 270.0, 160.0]],  # detector boxes looser than the masks
    )
    doc = json.loads(json.dumps(image_json(coffee, det)))
    assert [d["category_id"] for d in doc["detections"]] == [1, 2]
    assert [d["bbox"] for d in doc["detections"]] == [[30.0, 20.0, 90.0, 60.0], [150.0, 100.0, 110.0, 50.0]]
    assert doc["detections"][0]["box"] == [25.0, 15.0, 100.0, 70.0]
    record = {"file": "coffee.png", "height": 200, "width": 300, "annotations": doc["detections"]}
    gt_doc = coco_document([record], ["cup", "saucer"])
    results = [dict(d, image_id=1) for d in doc["detections"]]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_doc
        gt.createIndex()
        for iou_type in ("segm", "bbox"):
            evaluation = COCOeval(gt, gt.loadRes(json.loads(json.dumps(results))), iouType=iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert evaluation.stats[0] == pytest.approx(1.0), iou_type


def test_coco_writer_box_only_detections_use_box_area() -> None:
    image = load_image(data.astronaut()[:50, :60], name="astronaut")
    writer = CocoWriter()
    writer.add(image, _detections(None, [0.5], [0], ("helmet",), image.size, [[10, 5, 30, 45]]))
    writer.add(image, Detections.empty(image.size, classes=("flag",)))
    doc = writer.to_dict()
    (ann,) = doc["annotations"]
    assert ann["area"] == pytest.approx(20 * 40) and "segmentation" not in ann
    assert [c["name"] for c in doc["categories"]] == ["helmet", "flag"]
    assert len(doc["images"]) == 2


def test_overlay_colors_are_rgb_not_bgr() -> None:
    import supervision as sv

    gray = load_image(np.full((60, 80, 3), 100, np.uint8), name="gray")
    det = _detections([_rect(gray.size, 20, 50, 20, 70)], [0.9], [0], ("cup",), gray.size)
    expected = (np.array(sv.ColorPalette.DEFAULT.by_idx(0).as_rgb()) + 100) / 2  # 50 % mask opacity
    assert np.abs(overlay_image(gray, det)[35, 45].astype(float) - expected).max() <= 1
