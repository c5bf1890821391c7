"""Zero-shot evaluation: AP against pycocotools and hand-derived values, the SegInW layout and mean, the
top-100 / no-threshold rule, caching and resuming, and ``grounded eval`` end to end on tiny models.

The fixture datasets are built here, in tmp folders, from real ``skimage.data`` photos with hand-made polygon
masks, in the SegInW layout (``NAME/valid/_annotations_min1cat.coco.json``).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from skimage import data

from grounded.adapters import GroundingDINO
from grounded.cli import main
from grounded.core.detections import Detections
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.engine import Adapter, Pipeline, register_adapter
from grounded.evaluation import (
    SEGINW_ANNOTATION,
    SEGINW_DATASETS,
    EvalProtocol,
    PredictionCache,
    Scoring,
    build_eval_pipeline,
    coco_scores,
    evaluate_coco,
    evaluate_seginw,
    load_coco_dataset,
    load_seginw_reference,
    pipeline_fingerprint,
    predict_dataset,
    protocol_deviations,
    score_dataset,
)

# ---------------------------------------------------------------------- fixture datasets
# (skimage name, file extension, [(category id, polygon x0 y0 x1 y1 ...)]); polygons stay inside the image.
FRUITS = {
    "categories": [(0, "apple"), (1, "lemon"), (2, "orange"), (3, "pear")],
    "images": [
        ("coffee", "jpg", [(0, [50, 60, 200, 60, 200, 180, 50, 180]), (1, [300, 100, 420, 120, 360, 260])]),
        (
            "chelsea",
            "png",
            [
                (2, [100, 50, 180, 40, 220, 120, 160, 200, 90, 150]),
                (3, [300, 180, 420, 180, 420, 280, 300, 280]),
            ],
        ),
    ],
}
PUPPIES = {
    "categories": [(0, "puppy")],
    "images": [
        (
            "astronaut",
            "png",
            [(0, [40, 40, 160, 40, 160, 200, 40, 200]), (0, [300, 250, 480, 260, 470, 450, 310, 440])],
        ),
        (
            "rocket",
            "jpg",
            [(0, [200, 100, 330, 100, 330, 400, 200, 400]), (0, [400, 50, 600, 60, 590, 160, 410, 150])],
        ),
    ],
}


def _write_dataset(folder: Path, spec: dict[str, Any], annotation_name: str = SEGINW_ANNOTATION) -> Path:
    """Write the images and a COCO annotation file (polygons, as Roboflow exports them) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (name, ext, instances) in enumerate(spec["images"], start=1):
        pixels = getattr(data, name)()
        Image.fromarray(pixels).save(folder / f"{name}.{ext}")
        height, width = pixels.shape[:2]
        images.append({"id": image_id, "file_name": f"{name}.{ext}", "height": height, "width": width})
        for category_id, polygon in instances:
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": [polygon],
                    "bbox": [x, y, w, h],
                    "area": float(mask_utils.area(rle)),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": cid, "name": name, "supercategory": "fixture"} for cid, name in spec["categories"]]
    path = folder / annotation_name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def seginw_root(tmp_path_factory) -> Path:
    """A SegInW tree holding 2 of the 25 datasets (Fruits, Puppies) and one unrelated folder."""
    root = tmp_path_factory.mktemp("seginw")
    _write_dataset(root / "Fruits" / "valid", FRUITS)
    _write_dataset(root / "Puppies" / "valid", PUPPIES)
    (root / "notes").mkdir()
    return root


def _gt_masks(annotation_file: Path) -> dict[str, list[dict[str, Any]]]:
    """Per image file: its ground-truth instances with class index, xyxy box and bool mask."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
    index = {c["id"]: i for i, c in enumerate(coco.dataset["categories"])}
    out: dict[str, list[dict[str, Any]]] = {}
    for img in coco.dataset["images"]:
        entries = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            x, y, w, h = ann["bbox"]
            entries.append(
                {
                    "label": index[ann["category_id"]],
                    "box": [x, y, x + w, y + h],
                    "mask": coco.annToMask(ann) > 0,
                }
            )
        out[img["file_name"]] = entries
    return out


# ---------------------------------------------------------------------- oracle pipeline
class Oracle(Adapter):
    """Returns prepared detections per image file name (ground truth, shifted or partial): a pipeline stub."""

    outputs: ClassVar[dict[str, Any]] = {"detections": list[Detections]}
    tables: ClassVar[dict[str, dict[str, list[dict[str, Any]]]]] = {}
    calls: ClassVar[list[list[str]]] = []
    fail_on_call: ClassVar[int | None] = None  # simulate a crash (a killed run) on this call number

    def __init__(self, table: str = "") -> None:
        super().__init__(table=table)
        self.table = table

    def run(self, images: list[LoadedImage], prompt: Prompt) -> dict[str, Any]:
        Oracle.calls.append([im.name for im in images])
        if Oracle.fail_on_call is not None and len(Oracle.calls) == Oracle.fail_on_call:
            raise RuntimeError("simulated crash")
        out = []
        for im in images:
            entries = Oracle.tables[self.table].get(im.path.name if im.path else im.name, [])
            n = len(entries)
            out.append(
                Detections(
                    boxes=torch.tensor([e["box"] for e in entries], dtype=torch.float32).reshape(n, 4),
                    scores=torch.tensor([e.get("score", 0.9) for e in entries], dtype=torch.float32),
                    class_ids=torch.tensor([e["label"] for e in entries], dtype=torch.int64),
                    classes=prompt.classes,
                    phrases=tuple(prompt.classes[e["label"]] for e in entries),
                    image_size=im.size,
                    masks=torch.from_numpy(np.stack([e["mask"] for e in entries]))
                    if n
                    else torch.zeros((0, *im.size), dtype=torch.bool),
                    mask_scores=torch.full((n,), 0.5),
                )
            )
        return {"detections": out}


def oracle_pipeline(table: str) -> Pipeline:
    pipe = Pipeline("oracle")
    pipe.add("detector", Oracle(table=table))
    pipe.expose_input("images", ["detector.images"])
    pipe.expose_input("prompt", ["detector.prompt"])
    pipe.expose_output("detections", "detector.detections")
    return pipe


def _shift(mask: np.ndarray, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    out[:, dx:] = mask[:, : mask.shape[1] - dx]
    return out


def _pycocotools_ap(annotation_file: Path, results_file: Path, iou_type: str) -> float:
    """AP straight from pycocotools on the files, as the published script computes it."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        dt = gt.loadRes(str(results_file))
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


# ---------------------------------------------------------------------- AP, hand-derived and vs pycocotools
def _single_gt(tmp_path: Path) -> tuple[dict[str, Any], np.ndarray]:
    mask = np.zeros((100, 120), np.uint8)
    mask[30:80, 20:60] = 1  # 40 wide, 50 high
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 120}],
        "categories": [{"id": 5, "name": "thing"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 5,
                "segmentation": rle,
                "bbox": [20, 30, 40, 50],
                "area": 2000,
                "iscrowd": 0,
            }
        ],
    }
    return gt, mask


def _result(mask: np.ndarray, score: float) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return {"image_id": 1, "category_id": 5, "segmentation": rle, "score": score}


def _direct(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str = "segm") -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(results))), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("perfect", 1.0),
        ("shifted_8px", 0.4),  # IoU 32/48 = 0.667 passes 4 of the 10 IoU thresholds .50:.95
        ("shifted_2px", 0.9),  # IoU 38/42 = 0.905 passes 9 of 10
        ("false_positive_first", 0.5),  # precision 1/2 at recall 1 at every threshold
        ("nothing", 0.0),
    ],
)
def test_ap_hand_derived_and_equal_to_pycocotools(tmp_path, case, expected):
    gt, mask = _single_gt(tmp_path)
    wrong = np.zeros_like(mask)
    wrong[0:10, 100:120] = 1
    results = {
        "perfect": [_result(mask, 0.9)],
        "shifted_8px": [_result(_shift(mask, 8), 0.9)],
        "shifted_2px": [_result(_shift(mask, 2), 0.9)],
        "false_positive_first": [_result(wrong, 0.9), _result(mask, 0.8)],
        "nothing": [],
    }[case]
    scores = coco_scores(gt, results, "segm")
    assert scores.ap == pytest.approx(expected, abs=1e-12)
    assert scores.per_category == {5: pytest.approx(expected, abs=1e-12)}
    if results:
        assert scores.ap == _direct(gt, results)


def test_missing_predictions_give_the_interpolated_recall_fraction(seginw_root, tmp_path):
    """Half the instances found, perfectly: precision 1 up to recall .5 = 51 of 101 recall points."""
    annotation_file = seginw_root / "Puppies" / "valid" / SEGINW_ANNOTATION
    truth = _gt_masks(annotation_file)
    Oracle.tables["half"] = {name: entries[:1] for name, entries in truth.items()}
    dataset = load_coco_dataset(annotation_file, annotation_file.parent, name="Puppies")
    with PredictionCache(tmp_path / "c.sqlite") as cache:
        predictions = predict_dataset(dataset, oracle_pipeline("half"), cache, progress=False)
    result = score_dataset(predictions)
    assert result.mask is not None
    assert result.mask.ap == pytest.approx(51 / 101, abs=1e-12)
    assert result.box.ap == pytest.approx(51 / 101, abs=1e-12)
    results_file = tmp_path / "segm.json"
    results_file.write_text(json.dumps(result.segm_results))
    assert result.mask.ap == _pycocotools_ap(annotation_file, results_file, "segm")


def test_shifted_and_missing_predictions_match_pycocotools(seginw_root, tmp_path):
    """Mixed errors over a multi-class dataset: our AP is exactly what pycocotools gives on the same files."""
    annotation_file = seginw_root / "Fruits" / "valid" / SEGINW_ANNOTATION
    truth = _gt_masks(annotation_file)
    table = {}
    for k, (name, entries) in enumerate(sorted(truth.items())):
        changed = []
        for j, e in enumerate(entries):
            if (k, j) == (0, 1):
                continue  # missed
            shifted = dict(e, mask=_shift(e["mask"], 6 + 5 * j), score=0.9 - 0.1 * j)
            shifted["box"] = [e["box"][0] + 6 + 5 * j, e["box"][1], e["box"][2] + 6 + 5 * j, e["box"][3]]
            changed.append(shifted)
        changed.append(
            {
                "label": 3,
                "box": [0, 0, 30, 30],
                "mask": np.pad(
                    np.ones((30, 30), bool), ((0, e["mask"].shape[0] - 30), (0, e["mask"].shape[1] - 30))
                ),
                "score": 0.95,
            }
        )
        table[name] = changed
    Oracle.tables["fruits-shifted"] = table
    dataset = load_coco_dataset(annotation_file, annotation_file.parent, name="Fruits")
    with PredictionCache(tmp_path / "c.sqlite") as cache:
        result = score_dataset(
            predict_dataset(dataset, oracle_pipeline("fruits-shifted"), cache, progress=False)
        )
    for iou_type, results, ours in (
        ("segm", result.segm_results, result.mask),
        ("bbox", result.bbox_results, result.box),
    ):
        path = tmp_path / f"{iou_type}.json"
        path.write_text(json.dumps(results))
        assert ours is not None
        assert ours.ap == _pycocotools_ap(annotation_file, path, iou_type)
        assert 0.0 < ours.ap < 1.0


# ---------------------------------------------------------------------- SegInW layout and mean
def test_seginw_layout_mean_and_missing_datasets(seginw_root, tmp_path):
    fruits = _gt_masks(seginw_root / "Fruits" / "valid" / SEGINW_ANNOTATION)
    puppies = _gt_masks(seginw_root / "Puppies" / "valid" / SEGINW_ANNOTATION)
    Oracle.tables["layout"] = {**fruits, **{name: entries[:1] for name, entries in puppies.items()}}
    run = evaluate_seginw(seginw_root, oracle_pipeline("layout"), tmp_path / "report", progress=False)
    report = run.report
    by_name = {d["name"]: d for d in report["datasets"]}
    assert list(by_name) == ["Fruits", "Puppies"]
    assert by_name["Fruits"]["mask_ap"] == pytest.approx(100.0, abs=1e-9)
    assert by_name["Puppies"]["mask_ap"] == pytest.approx(100 * 51 / 101, abs=1e-9)
    summary = report["summary"]
    assert summary["mask_ap_mean"] == pytest.approx((100.0 + 100 * 51 / 101) / 2, abs=1e-9)
    assert summary["mask_ap_median"] == pytest.approx((100.0 + 100 * 51 / 101) / 2, abs=1e-9)
    assert (summary["evaluated"], summary["expected"], summary["complete"]) == (2, 25, False)
    assert report["missing_datasets"] == [n for n in SEGINW_DATASETS if n not in ("Fruits", "Puppies")]
    assert report["ignored_folders"] == ["notes"]
    # the published columns: their own means over all 25, and over the same two datasets
    ref = summary["reference"]["gsam_h"]
    assert ref["mean_all"] == pytest.approx(48.716, abs=1e-9) and ref["median_all"] == 47.5
    assert ref["mean_evaluated"] == pytest.approx((82.3 + 50.1) / 2, abs=1e-9)
    assert summary["reference"]["ghqsam_h"]["mean_all"] == pytest.approx(49.62, abs=1e-9)
    # the oracle has no top_k / box_threshold: the report says the protocol could not be checked
    assert report["protocol_deviations"] and "no detector node" in report["protocol_deviations"][0]


def test_reference_data_is_the_published_table():
    ref = load_seginw_reference()
    assert set(ref.values) == set(SEGINW_DATASETS) and len(ref.values) == 25
    assert ref.columns == ("gsam_h", "ghqsam_h", "gsam2_l", "ghqsam2_l")
    assert any("SysCV/sam-hq" in line and "seginw/README.md" in line for line in ref.source)
    means = {c: round(ref.mean(c), 1) for c in ref.columns}
    assert means == {"gsam_h": 48.7, "ghqsam_h": 49.6, "gsam2_l": 49.5, "ghqsam2_l": 50.0}


def test_non_contiguous_category_ids_map_by_position(tmp_path):
    """Class i of the prompt is the i-th category in the file, whatever its id (here 7 and 3)."""
    spec = {
        "categories": [(7, "cat"), (3, "cup")],
        "images": [
            (
                "chelsea",
                "png",
                [(7, [100, 50, 220, 50, 220, 200, 100, 200]), (3, [300, 100, 400, 100, 400, 250, 300, 250])],
            )
        ],
    }
    annotation_file = _write_dataset(tmp_path / "ds", spec, "val.json")
    Oracle.tables["ids"] = _gt_masks(annotation_file)
    run = evaluate_coco(
        annotation_file, annotation_file.parent, oracle_pipeline("ids"), tmp_path / "out", progress=False
    )
    (row,) = run.report["datasets"]
    assert row["prompt"] == "cat . cup"
    assert row["mask_ap"] == pytest.approx(100.0) and row["box_ap"] == pytest.approx(100.0)
    assert row["per_category_mask_ap"] == {"cat": pytest.approx(100.0), "cup": pytest.approx(100.0)}
    segm = json.loads((tmp_path / "out" / "predictions" / "val_segm.json").read_text())
    assert sorted(r["category_id"] for r in segm) == [3, 7]


# ---------------------------------------------------------------------- the top-100 / no-threshold rule
class StubDINO(GroundingDINO):
    """Grounding DINO whose network output is replaced by fixed token probabilities and boxes for 60 queries:
    3 classes give 180 (query, class) pairs, most far below the default 0.35 threshold, on 3 distinct boxes
    (so NMS would keep only a handful), some reaching past the image border."""

    NUM_QUERIES = 60

    def _forward(self, pixels, text):
        batch = pixels["pixel_values"].shape[0]
        tokens = text.input_ids.shape[1]
        gen = torch.Generator().manual_seed(1234)
        probs = torch.rand((self.NUM_QUERIES, tokens), generator=gen) * 0.3
        base = torch.tensor([[-0.05, 0.1, 0.5, 0.6], [0.2, 0.2, 0.7, 0.9], [0.6, 0.0, 1.08, 0.4]])
        boxes = base[torch.arange(self.NUM_QUERIES) % 3]
        return probs.expand(batch, -1, -1).clone(), boxes.expand(batch, -1, -1).clone()


register_adapter("test_stub_grounding_dino")(StubDINO)


def test_top_100_pairs_without_threshold_nms_or_clipping(tiny_gdino, seginw_root, tmp_path):
    spec = {
        "name": "stub",
        "nodes": {
            "detector": {
                "type": "test_stub_grounding_dino",
                "params": {
                    "model": str(tiny_gdino),
                    "box_threshold": 0.35,
                    "nms_threshold": 0.8,
                    "top_k": 300,
                },
            }
        },
        "inputs": {"images": ["detector.images"], "prompt": ["detector.prompt"]},
        "outputs": {"detections": "detector.detections"},
    }
    pipeline, notes = build_eval_pipeline(spec, shared={"device": "cpu"})
    assert notes == [] and protocol_deviations(pipeline) == []
    params = pipeline.adapter("detector").get_params()
    assert (params["top_k"], params["box_threshold"], params["nms_threshold"]) == (100, 0.0, None)
    assert (params["multi_label"], params["class_reduction"], params["clip_boxes"]) == (True, "mean", False)
    assert params["image_backend"] == "pil"

    spec3 = {
        "categories": [(0, "red car"), (1, "dog"), (2, "the man's left shoe")],
        "images": [("coffee", "jpg", [(0, [10, 10, 50, 10, 50, 50])])],
    }
    annotation_file = _write_dataset(tmp_path / "stub", spec3, "val.json")
    dataset = load_coco_dataset(annotation_file, annotation_file.parent)
    with PredictionCache(tmp_path / "c.sqlite") as cache:
        predictions = predict_dataset(dataset, pipeline, cache, progress=False)
    (records,) = predictions.by_image.values()

    # expected, from first principles: a pair's score is the mean token probability over the class's tokens
    detector = pipeline.adapter("detector")
    (text,) = detector.encode_prompt(dataset.prompt())
    probs, boxes = detector._forward({"pixel_values": torch.zeros(1, 3, 8, 8)}, text)
    caption = "red car . dog . the man's left shoe ."
    assert text.caption.text == caption
    spans = [(0, 7), (10, 13), (16, 35)]
    token_sets = [
        [t for t, (a, b) in enumerate(text.offsets) if b > a and a >= s0 and b <= s1] for s0, s1 in spans
    ]
    assert [len(t) for t in token_sets] == [2, 1, 6]
    scores = np.stack([probs[0][:, t].mean(-1).numpy() for t in token_sets], axis=1)  # (60, 3)
    flat = scores.reshape(-1)
    top = np.argsort(-flat, kind="stable")[:100]
    assert len(records) == 100 and len(flat) == 180
    assert [r["label"] for r in records] == [int(i % 3) for i in top]
    np.testing.assert_allclose([r["score"] for r in records], flat[top], rtol=1e-6)
    assert min(r["score"] for r in records) < 0.35 / 2  # far below any usual box threshold
    height, width = 400, 600
    expected_boxes = boxes[0][top // 3].numpy() * [width, height, width, height]
    got = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)])
    np.testing.assert_allclose(got, expected_boxes, rtol=1e-5, atol=1e-3)
    assert got[:, 0].min() < 0 and got[:, 2].max() > width  # not clipped: as the model predicted
    assert len({tuple(np.round(b, 2)) for b in got}) == 3  # duplicates kept: no NMS


def test_protocol_is_applied_to_bundled_pipelines_and_overrides_show_as_deviations(tiny_gdino):
    pipeline, notes = build_eval_pipeline("grounded_sam", overrides={"detector": {"model": str(tiny_gdino)}})
    assert notes == [] and protocol_deviations(pipeline) == []
    bent, _ = build_eval_pipeline("grounded_sam", overrides={"detector": {"top_k": 10}})
    assert protocol_deviations(bent) == ["detector.top_k = 10 (protocol: 100)"]
    assert EvalProtocol().params() == {
        "top_k": 100,
        "box_threshold": 0.0,
        "nms_threshold": None,
        "multi_label": True,
        "class_reduction": "mean",
        "clip_boxes": False,
        "image_backend": "pil",
    }


# ---------------------------------------------------------------------- caching, resuming, re-scoring
def test_killed_run_resumes_and_rescoring_runs_nothing(seginw_root, tmp_path):
    annotation_file = seginw_root / "Puppies" / "valid" / SEGINW_ANNOTATION
    Oracle.tables["resume"] = _gt_masks(annotation_file)
    dataset = load_coco_dataset(annotation_file, annotation_file.parent, name="Puppies")
    pipeline = oracle_pipeline("resume")
    Oracle.calls.clear()
    Oracle.fail_on_call = 2
    with PredictionCache(tmp_path / "c.sqlite") as cache, pytest.raises(RuntimeError, match="simulated"):
        predict_dataset(dataset, pipeline, cache, batch_size=1, progress=False)
    Oracle.fail_on_call = None
    with PredictionCache(tmp_path / "c.sqlite") as cache:
        assert len(cache) == 1  # the first batch was committed before the crash
        resumed = predict_dataset(dataset, pipeline, cache, batch_size=1, progress=False)
        assert (resumed.images_run, resumed.images_cached) == (1, 1)
        assert Oracle.calls == [["astronaut"], ["rocket"], ["rocket"]]
        again = predict_dataset(dataset, pipeline, cache, batch_size=1, progress=False, cache_only=True)
        assert (again.images_run, again.images_cached, again.failures) == (0, 2, [])
        assert len(Oracle.calls) == 3
        full = score_dataset(again)
        top1 = score_dataset(again, Scoring(max_dets=1))
        assert full.mask is not None and top1.mask is not None
        assert full.mask.ap == pytest.approx(1.0) and top1.mask.ap == pytest.approx(51 / 101, abs=1e-12)
        # another pipeline setting has another fingerprint: nothing cached for it
        other = oracle_pipeline("other")
        assert pipeline_fingerprint(other) != pipeline_fingerprint(pipeline)
        missing = predict_dataset(dataset, other, cache, progress=False, cache_only=True)
        assert len(missing.failures) == 2 and "no cached prediction" in missing.failures[0]


def test_cache_never_serves_a_changed_image(seginw_root, tmp_path):
    root = tmp_path / "copy"
    annotation_file = _write_dataset(root, PUPPIES, "val.json")
    Oracle.tables["changed"] = _gt_masks(annotation_file)
    dataset = load_coco_dataset(annotation_file, root)
    pipeline = oracle_pipeline("changed")
    with PredictionCache(tmp_path / "c.sqlite") as cache:
        assert predict_dataset(dataset, pipeline, cache, progress=False).images_run == 2
        pixels = np.array(Image.open(root / "astronaut.png"))
        Image.fromarray(255 - pixels).save(root / "astronaut.png")  # same path and size, new content
        again = predict_dataset(dataset, pipeline, cache, progress=False)
        assert (again.images_run, again.images_cached) == (1, 1)


def test_unreadable_image_is_reported_and_its_instances_count_as_misses(tmp_path):
    root = tmp_path / "broken"
    annotation_file = _write_dataset(root, PUPPIES, "val.json")
    Oracle.tables["broken"] = _gt_masks(annotation_file)
    (root / "rocket.jpg").write_bytes(b"not an image")
    dataset = load_coco_dataset(annotation_file, root)
    with PredictionCache(tmp_path / "c.sqlite") as cache:
        predictions = predict_dataset(dataset, oracle_pipeline("broken"), cache, progress=False)
    result = score_dataset(predictions)
    assert len(result.failures) == 1 and "rocket.jpg" in result.failures[0]
    assert result.mask is not None and result.mask.ap == pytest.approx(51 / 101, abs=1e-12)  # 2 of 4 found


def test_fingerprint_ignores_device_and_batch_size_only(tiny_gdino, tiny_sam):
    def fp(**shared):
        pipe, _ = build_eval_pipeline(
            "grounded_sam",
            overrides={"detector": {"model": str(tiny_gdino)}, "segmenter": {"model": str(tiny_sam)}},
            shared=shared,
        )
        return pipeline_fingerprint(pipe)

    assert fp() == fp(device="cpu", batch_size=1)
    assert fp() != fp(precision="bf16")


def test_scoring_options_change_only_the_results(seginw_root, tmp_path):
    annotation_file = seginw_root / "Fruits" / "valid" / SEGINW_ANNOTATION
    truth = _gt_masks(annotation_file)
    # each true instance plus a duplicate box of the same class, scored lower
    Oracle.tables["dups"] = {n: [*es, *({**e, "score": 0.5} for e in es)] for n, es in truth.items()}
    dataset = load_coco_dataset(annotation_file, annotation_file.parent)
    with PredictionCache(tmp_path / "c.sqlite") as cache:
        predictions = predict_dataset(dataset, oracle_pipeline("dups"), cache, progress=False)
    assert score_dataset(predictions).num_predictions == 8
    assert score_dataset(predictions, Scoring(nms_threshold=0.5)).num_predictions == 4
    assert score_dataset(predictions, Scoring(score_threshold=0.6)).num_predictions == 4
    assert score_dataset(predictions, Scoring(max_dets=1)).num_predictions == 2
    products = score_dataset(predictions, Scoring(mask_score="detector_x_mask")).segm_results
    assert sorted({round(r["score"], 6) for r in products}) == [0.25, 0.45]  # mask score 0.5 x detector score


# ---------------------------------------------------------------------- the command line, tiny random models
def test_grounded_eval_seginw_end_to_end(tiny_gdino, tiny_sam, seginw_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    argv = [
        "eval",
        "seginw",
        "--data",
        str(seginw_root),
        "--pipeline",
        "grounded_sam",
        "--detector",
        str(tiny_gdino),
        "--segmenter",
        str(tiny_sam),
        "--out",
        str(out),
        "--device",
        "cpu",
        "-q",
    ]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1  # 23 of the 25 datasets are missing: reported, not skipped silently
    assert "over 2 of 25 SegInW datasets" in err and "23 missing" in err and "Traceback" not in err
    assert "4 image(s) run, 0 from the cache" in err
    for name in ("report.md", "report.json", "mask_ap.png", "submission/seginw_Fruits_val.json"):
        assert (out / name).is_file(), name
    assert (out / "mask_ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert [d["name"] for d in report["datasets"]] == ["Fruits", "Puppies"]
    assert len(report["missing_datasets"]) == 23 and report["summary"]["complete"] is False
    assert report["protocol_deviations"] == [] and report["scoring_is_protocol"] is True
    assert report["pipeline"]["nodes"]["detector"]["params"]["top_k"] == 100
    md = (out / "report.md").read_text()
    assert (
        "Incomplete" in md
        and "not comparable" in md
        and "| Fruits | 2 |" in md
        and "| Cows | – | missing" in md
    )
    assert "Grounded-SAM (DINO-B + SAM-H)" in md and "48.7" in md and "SysCV/sam-hq" in md
    for row in report["datasets"]:
        annotation_file = seginw_root / row["name"] / "valid" / SEGINW_ANNOTATION
        submission = out / "submission" / f"seginw_{row['name']}_val.json"
        results = json.loads(submission.read_text())
        # the tiny detector has 30 queries: 4 classes give 120 pairs (100 kept), 1 class gives 30 (all kept)
        per_image = 100 if row["name"] == "Fruits" else 30
        assert len(results) == 2 * per_image == row["predictions"]
        assert set(results[0]) == {"image_id", "category_id", "segmentation", "score"}
        with contextlib.redirect_stdout(io.StringIO()):
            loaded = COCO(str(annotation_file)).loadRes(str(submission))
        assert len(loaded.getAnnIds()) == len(results)
        assert row["mask_ap"] == pytest.approx(
            100 * _pycocotools_ap(annotation_file, submission, "segm"), abs=1e-9
        )

    # again: everything comes from the cache; then re-score only, with no model allowed to load
    assert main(argv) == 1
    assert "0 image(s) run, 4 from the cache" in capsys.readouterr().err

    def no_models(self):
        raise AssertionError("a model was loaded while re-scoring")

    monkeypatch.setattr(Pipeline, "warm_up", no_models)
    monkeypatch.setattr(GroundingDINO, "warm_up", no_models)
    assert main([*argv, "--rescore", "--max-dets", "10"]) == 1
    assert "0 image(s) run, 4 from the cache" in capsys.readouterr().err
    rescored = json.loads((out / "report.json").read_text())
    assert rescored["scoring"]["max_dets"] == 10 and rescored["scoring_is_protocol"] is False
    assert len(json.loads((out / "submission" / "seginw_Fruits_val.json").read_text())) == 20
    assert "Scoring differs from the published protocol" in (out / "report.md").read_text()


def test_grounded_eval_coco_and_usage_errors(tiny_gdino, tiny_sam, seginw_root, tmp_path, capsys):
    folder = seginw_root / "Puppies" / "valid"
    out = tmp_path / "coco"
    code = main(
        [
            "eval",
            "coco",
            "--images",
            str(folder),
            "--annotations",
            str(folder / SEGINW_ANNOTATION),
            "--name",
            "puppies",
            "--detector",
            str(tiny_gdino),
            "--segmenter",
            str(tiny_sam),
            "--out",
            str(out),
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    (row,) = report["datasets"]
    assert row["name"] == "puppies" and row["mask_ap"] is not None and row["box_ap"] is not None
    for kind in ("bbox", "segm"):
        path = out / "predictions" / f"puppies_{kind}.json"
        expected = row["mask_ap"] if kind == "segm" else row["box_ap"]
        assert expected == pytest.approx(
            100 * _pycocotools_ap(folder / SEGINW_ANNOTATION, path, kind), abs=1e-9
        )
    capsys.readouterr()
    assert main(["eval", "seginw", "--data", str(tmp_path / "nowhere"), "--out", str(out), "-q"]) == 2
    assert (
        main(["eval", "seginw", "--data", str(seginw_root), "--datasets", "Nope", "--out", str(out), "-q"])
        == 2
    )
    assert (
        main(
            [
                "eval",
                "coco",
                "--images",
                str(folder),
                "--annotations",
                str(folder / SEGINW_ANNOTATION),
                "--out",
                str(tmp_path / "fresh"),
                "--rescore",
                "-q",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "SegInW folder" in err and "not SegInW datasets: Nope" in err and "Traceback" not in err
    assert "--rescore: no prediction cache" in err
