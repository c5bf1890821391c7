"""COCO average precision with ``pycocotools`` (the evaluator the published numbers were computed with)."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["STAT_NAMES", "CocoScores", "coco_scores"]

IouType = Literal["bbox", "segm"]

#: ``COCOeval.stats`` in order: AP at IoU .50:.95, .50, .75, small / medium / large; AR at 1 / 10 / 100 dets,
#: small / medium / large.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass(frozen=True)
class CocoScores:
    """``COCOeval`` results: ``stats`` by name (fractions in ``[0, 1]``; ``-1`` where undefined, e.g. no
    ground truth of that size) and the AP of each category id (``None`` when it has no ground truth)."""

    iou_type: str
    stats: dict[str, float]
    per_category: dict[int, float | None]

    @property
    def ap(self) -> float:
        return self.stats["AP"]


def _coco_from_dict(dataset: dict[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_scores(
    gt: dict[str, Any] | Any,
    results: Sequence[dict[str, Any]],
    iou_type: IouType,
    image_ids: Sequence[int] | None = None,
) -> CocoScores:
    """Evaluate COCO results (``image_id``, ``category_id``, ``score`` and ``bbox`` or ``segmentation``).

    ``gt`` is a COCO dict or a ``pycocotools.coco.COCO``. This is ``COCO.loadRes`` + ``COCOeval`` with the
    default parameters (IoU .50:.05:.95, 100 detections per image and category, all categories), exactly as
    the published evaluation runs it; ``image_ids`` restricts the images (default: all ground-truth images).
    With no results at all every defined AP is 0 (``loadRes`` cannot take an empty list).
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = _coco_from_dict(gt) if isinstance(gt, dict) else gt
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))  # loadRes writes into its input
        else:
            coco_dt = _coco_from_dict(
                {
                    "images": list(coco_gt.dataset["images"]),
                    "categories": list(coco_gt.dataset["categories"]),
                    "annotations": [],
                }
            )
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
    precision = evaluator.eval["precision"]  # (iou, recall, category, area, max dets)
    per_category: dict[int, float | None] = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_category[int(cat_id)] = float(np.mean(p)) if p.size else None
    return CocoScores(iou_type=iou_type, stats=stats, per_category=per_category)
