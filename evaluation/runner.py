"""Running a pipeline over a COCO-format dataset (cached per image, resumable) and scoring its predictions."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grounded.core.detections import Detections
from grounded.core.images import ImageLoadError, LoadedImage, load_image
from grounded.engine import Pipeline
from grounded.engine.serialization import pipeline_from_dict, read_pipeline_spec
from grounded.evaluation.cache import PredictionCache, entry_key
from grounded.evaluation.datasets import CocoDataset, DatasetError
from grounded.evaluation.metrics import CocoScores, coco_scores
from grounded.evaluation.protocol import EvalProtocol, Scoring, pipeline_fingerprint, protocol_overrides

__all__ = [
    "DatasetPredictions",
    "DatasetResult",
    "EvaluationError",
    "build_eval_pipeline",
    "detections_to_records",
    "predict_dataset",
    "score_dataset",
    "to_coco_results",
]


class EvaluationError(Exception):
    """An evaluation that cannot proceed (reported as one line by the CLI)."""


def build_eval_pipeline(
    pipeline: str | Path | Mapping[str, Any] = "grounded_sam",
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    shared: Mapping[str, Any] | None = None,
    protocol: EvalProtocol | None = None,
) -> tuple[Pipeline, list[str]]:
    """Build a pipeline (bundled name, YAML path or description) with its detector nodes on the protocol.

    ``overrides`` (node → parameters) are applied after the protocol, so a deliberate deviation is possible
    and shows up in the report. Returns the pipeline and notes on protocol settings that could not be applied.
    """
    spec = dict(pipeline) if isinstance(pipeline, Mapping) else read_pipeline_spec(pipeline)
    merged, notes = protocol_overrides(spec, protocol)
    for node, params in (overrides or {}).items():
        merged.setdefault(node, {}).update(params)
    return pipeline_from_dict(spec, merged, shared), notes


# ---------------------------------------------------------------------- predictions
def detections_to_records(det: Detections, classes: Sequence[str]) -> list[dict[str, Any]]:
    """JSON-ready per-detection records: ``bbox`` (xywh), ``score``, ``label`` (index into ``classes``),
    ``segmentation`` (RLE or ``None``) and ``mask_score``. Scores keep their full float32 value."""
    from grounded.core.boxes import xyxy_to_xywh

    lookup = {name: i for i, name in enumerate(classes)}
    unknown = sorted({c for c in det.class_names if c not in lookup})
    if unknown:
        raise EvaluationError(
            f"the pipeline returned classes {unknown} that are not in the prompt {list(classes)}"
        )
    boxes = xyxy_to_xywh(det.boxes.detach().float().cpu()).tolist()
    scores = det.scores.detach().float().cpu().tolist()
    labels = [lookup[c] for c in det.class_names]
    rles: list[Any] = det.rles() if det.has_masks else [None] * len(det)
    mask_scores: list[Any] = (
        det.mask_scores.detach().float().cpu().tolist() if det.mask_scores is not None else [None] * len(det)
    )
    return [
        {"bbox": box, "score": score, "label": label, "segmentation": rle, "mask_score": ms}
        for box, score, label, rle, ms in zip(boxes, scores, labels, rles, mask_scores, strict=True)
    ]


@dataclass
class DatasetPredictions:
    """The cached or fresh records of every image of a dataset that has them."""

    dataset: CocoDataset
    by_image: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    images_run: int = 0
    images_cached: int = 0


def _load(dataset: CocoDataset, image: dict[str, Any]) -> LoadedImage:
    """Load an image and check it against the size the annotations give.

    grounded applies the EXIF orientation; the published script reads pixels as stored (PIL, no EXIF). Where
    the two differ and only the stored orientation matches the annotations, the stored pixels are used.
    """
    path = dataset.image_path(image)
    loaded = load_image(path)
    expected = (int(image.get("height") or 0), int(image.get("width") or 0))
    if not all(expected) or loaded.size == expected:
        return loaded
    from PIL import Image

    try:
        with Image.open(path) as raw:
            pixels = np.ascontiguousarray(np.asarray(raw.convert("RGB")))
    except OSError:
        pixels = np.zeros((0, 0, 3), np.uint8)
    if pixels.shape[:2] == expected:
        return LoadedImage(pixels=pixels, name=loaded.name, path=path)
    raise DatasetError(
        f"{path}: image is {loaded.size[1]}x{loaded.size[0]} but the annotations say {expected[1]}x{expected[0]}"
    )


def predict_dataset(
    dataset: CocoDataset,
    pipeline: Pipeline,
    cache: PredictionCache,
    *,
    batch_size: int = 4,
    progress: bool = True,
    cache_only: bool = False,
    fingerprint: str | None = None,
) -> DatasetPredictions:
    """Run ``pipeline`` on every image of ``dataset`` that the cache does not already hold.

    Each batch's outputs are stored in one transaction as soon as it completes, so a killed run resumes where
    it stopped. ``cache_only`` never runs a model: images without cached outputs are listed as failures.
    A missing, corrupt or wrongly sized image is listed as a failure; the others complete.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    prompt = dataset.prompt()
    classes = prompt.classes
    fingerprint = fingerprint or pipeline_fingerprint(pipeline)
    out = DatasetPredictions(dataset)
    todo: list[dict[str, Any]] = []
    for image in dataset.images:
        key = cache.file_key(dataset.image_path(image))
        hit = cache.get(entry_key(fingerprint, key, classes)) if key is not None else None
        if hit is not None:
            out.by_image[int(image["id"])] = hit["records"]
            out.images_cached += 1
        else:
            todo.append(image)
    if cache_only:
        out.failures.extend(
            f"{dataset.image_path(im)}: no cached prediction for this pipeline" for im in todo
        )
        return out
    if not todo:
        return out
    pipeline.validate()
    pipeline.warm_up()
    bar = tqdm(total=len(todo), unit="img", desc=dataset.name, disable=not progress or None, file=sys.stderr)
    try:
        for start in range(0, len(todo), batch_size):
            batch: list[tuple[dict[str, Any], LoadedImage, str]] = []
            for image in todo[start : start + batch_size]:
                try:
                    loaded = _load(dataset, image)
                except (ImageLoadError, DatasetError) as exc:
                    out.failures.append(str(exc))
                    bar.update(1)
                    continue
                key = entry_key(fingerprint, loaded.key, classes)
                hit = cache.get(key)  # same content under another path or a touched file
                if hit is not None:
                    out.by_image[int(image["id"])] = hit["records"]
                    out.images_cached += 1
                    cache.remember_files([(dataset.image_path(image), loaded.key)])
                    bar.update(1)
                else:
                    batch.append((image, loaded, key))
            if not batch:
                continue
            detections = pipeline.run(images=[im for _, im, _ in batch], prompt=prompt)["detections"]
            entries = []
            for (image, loaded, key), det in zip(batch, detections, strict=True):
                records = detections_to_records(det, classes)
                out.by_image[int(image["id"])] = records
                entries.append((key, {"size": list(loaded.size), "records": records}))
            cache.put_many(entries)
            cache.remember_files([(dataset.image_path(image), loaded.key) for image, loaded, _ in batch])
            out.images_run += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    return out


# ---------------------------------------------------------------------- scoring
def _select(records: list[dict[str, Any]], scoring: Scoring) -> list[tuple[dict[str, Any], float]]:
    """The records kept by ``scoring``, best first, each with its result score."""
    if scoring.mask_score == "detector":
        scores = [float(r["score"]) for r in records]
    else:
        if any(r.get("mask_score") is None for r in records):
            raise EvaluationError(f"mask_score={scoring.mask_score!r} needs a segmenter's predicted IoU")
        scores = [
            float(r["mask_score"]) * (float(r["score"]) if scoring.mask_score == "detector_x_mask" else 1.0)
            for r in records
        ]
    order = sorted(range(len(records)), key=lambda i: -scores[i])  # stable: ties keep the pipeline's order
    if scoring.score_threshold is not None:
        order = [i for i in order if scores[i] > scoring.score_threshold]
    if scoring.nms_threshold is not None and order:
        from torchvision.ops import batched_nms

        xywh = torch.tensor([records[i]["bbox"] for i in order], dtype=torch.float32)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        kept = batched_nms(
            xyxy,
            torch.tensor([scores[i] for i in order], dtype=torch.float32),
            torch.tensor([records[i]["label"] for i in order]),
            scoring.nms_threshold,
        )
        order = [order[j] for j in sorted(kept.tolist())]
    if scoring.max_dets is not None:
        order = order[: scoring.max_dets]
    return [(records[i], scores[i]) for i in order]


def to_coco_results(
    predictions: DatasetPredictions, scoring: Scoring | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO ``bbox`` results and ``segm`` results (the published submission format) for ``scoring``.

    A record's ``label`` (its class index in the prompt) becomes the id of that category in the dataset.
    """
    scoring = scoring or Scoring()
    category_ids = predictions.dataset.category_ids
    boxes: list[dict[str, Any]] = []
    masks: list[dict[str, Any]] = []
    for image_id in sorted(predictions.by_image):
        for record, score in _select(predictions.by_image[image_id], scoring):
            category_id = category_ids[int(record["label"])]
            boxes.append(
                {"image_id": image_id, "category_id": category_id, "bbox": record["bbox"], "score": score}
            )
            if record.get("segmentation") is not None:
                masks.append(
                    {
                        "image_id": image_id,
                        "category_id": category_id,
                        "segmentation": record["segmentation"],
                        "score": score,
                    }
                )
    return boxes, masks


@dataclass
class DatasetResult:
    """The scores of one dataset and how they were obtained."""

    name: str
    num_images: int
    num_annotations: int
    category_names: dict[int, str]  # category id -> name, in file order
    prompt: str
    box: CocoScores
    mask: CocoScores | None
    num_predictions: int
    images_run: int
    images_cached: int
    failures: list[str]
    segm_results: list[dict[str, Any]] = field(repr=False, default_factory=list)
    bbox_results: list[dict[str, Any]] = field(repr=False, default_factory=list)

    @property
    def mask_ap(self) -> float | None:
        """Mask AP in percent (as published), ``None`` without masks."""
        return None if self.mask is None else 100.0 * self.mask.ap

    @property
    def box_ap(self) -> float:
        return 100.0 * self.box.ap

    def to_json(self) -> dict[str, Any]:
        names = self.category_names
        return {
            "name": self.name,
            "images": self.num_images,
            "annotations": self.num_annotations,
            "categories": list(names.values()),
            "prompt": self.prompt,
            "mask_ap": self.mask_ap,
            "box_ap": self.box_ap,
            "mask": None if self.mask is None else _percent(self.mask.stats),
            "box": _percent(self.box.stats),
            "per_category_mask_ap": None
            if self.mask is None
            else {names[k]: (None if v is None else 100.0 * v) for k, v in self.mask.per_category.items()},
            "per_category_box_ap": {
                names[k]: (None if v is None else 100.0 * v) for k, v in self.box.per_category.items()
            },
            "predictions": self.num_predictions,
            "images_run": self.images_run,
            "images_cached": self.images_cached,
            "failed_images": list(self.failures),
        }


def _percent(stats: Mapping[str, float]) -> dict[str, float]:
    return {k: (100.0 * v if v >= 0 else -1.0) for k, v in stats.items()}


def score_dataset(predictions: DatasetPredictions, scoring: Scoring | None = None) -> DatasetResult:
    """Box AP and (when the ground truth and the predictions have masks) mask AP of a dataset's predictions.

    Every ground-truth image counts: one without predictions (failed to load) only contributes misses.
    """
    dataset = predictions.dataset
    boxes, masks = to_coco_results(predictions, scoring)
    coco = dataset.coco()
    box = coco_scores(coco, boxes, "bbox")
    has_masks = any(r.get("segmentation") is not None for recs in predictions.by_image.values() for r in recs)
    mask = coco_scores(coco, masks, "segm") if dataset.has_masks and (has_masks or not boxes) else None
    return DatasetResult(
        name=dataset.name,
        num_images=len(dataset.images),
        num_annotations=dataset.num_annotations,
        category_names={int(c["id"]): str(c["name"]) for c in dataset.categories},
        prompt=str(dataset.prompt()),
        box=box,
        mask=mask,
        num_predictions=len(boxes),
        images_run=predictions.images_run,
        images_cached=predictions.images_cached,
        failures=list(predictions.failures),
        segm_results=masks,
        bbox_results=boxes,
    )
