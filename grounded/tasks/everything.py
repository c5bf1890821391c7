"""Segment everything at one granularity level: a grid of clicks (as SAM's automatic mask generator), one mask
per click at level ``L``, filtered and de-duplicated, returned as :class:`Detections`.

Works with any segmenter that has ``predict_levels(image, points=..., levels=...)``:

* Semantic-SAM (6 fixed granularity prompts): level ``L`` is the ``L``-th prompt, finest first, for every click
  (clicks are decoded ``points_per_batch`` at a time, each independently);
* SAM / HQ-SAM / SAM 2 (3 candidates per click, no fixed meaning): level ``L`` is each click's ``L``-th finest
  distinct mask (after merging near-duplicates); clicks with fewer levels give none.

Then, as the official generators do: masks whose predicted IoU is below ``pred_iou_thresh`` or whose area is
below ``min_area`` are dropped, and box NMS (``box_nms_thresh``, scored by predicted IoU) removes duplicates from
neighbouring clicks. The stability-score filter and crop layers of SAM's generator are not implemented.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import nms

from grounded.core.detections import Detections
from grounded.core.images import LoadedImage

__all__ = ["masks_to_boxes", "point_grid", "segment_everything"]


def point_grid(points_per_side: int, image_size: tuple[int, int]) -> torch.Tensor:
    """``points_per_side²`` clicks ``(N, 2)`` in pixels at the centres of a regular grid over ``(H, W)``."""
    if points_per_side < 1:
        raise ValueError("points_per_side must be at least 1")
    height, width = image_size
    offset = 1 / (2 * points_per_side)
    side = torch.linspace(offset, 1 - offset, points_per_side)
    ys, xs = torch.meshgrid(side, side, indexing="ij")
    return torch.stack([xs.reshape(-1) * width, ys.reshape(-1) * height], -1)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes ``(N, 4)`` (x1, y1 exclusive) of ``(N, H, W)`` bool masks; zeros for empty masks."""
    if len(masks) == 0:
        return torch.zeros((0, 4), device=masks.device)
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[1:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).min(1).values
    y1 = torch.where(rows, ar_h + 1, 0).max(1).values
    x0 = torch.where(cols, ar_w, w).min(1).values
    x1 = torch.where(cols, ar_w + 1, 0).max(1).values
    boxes = torch.stack([x0, y0, x1, y1], -1).float()
    return torch.where(masks.flatten(1).any(1)[:, None], boxes, torch.zeros_like(boxes))


def segment_everything(
    segmenter: Any,
    image: LoadedImage,
    level: int,
    points_per_side: int = 32,
    points_per_batch: int = 64,
    pred_iou_thresh: float = 0.88,
    box_nms_thresh: float = 0.7,
    min_area: int = 0,
) -> Detections:
    """Every mask at granularity ``level`` (1 = finest) over a click grid, as one image's :class:`Detections`.

    Classes: ``("level L",)``, or the object labels when the segmenter returns labelled levels.
    ``scores`` and ``mask_scores`` are the predicted IoU.
    """
    if level < 1:
        raise ValueError("level must be at least 1 (1 = finest)")
    if points_per_batch < 1:
        raise ValueError("points_per_batch must be at least 1")
    fixed = int(getattr(segmenter, "fixed_levels", 0))
    if fixed and level > fixed:
        raise ValueError(f"this segmenter has levels 1..{fixed}, not {level}")
    grid = point_grid(points_per_side, image.size)
    masks, scores, labels = [], [], []
    for start in range(0, len(grid), points_per_batch):
        batch = grid[start : start + points_per_batch]
        results = segmenter.predict_levels(image, points=batch, levels=[level] if fixed else "all")
        for result in results:
            if level not in result.levels:
                continue
            k = result.levels.index(level)
            masks.append(result.masks[k])
            scores.append(float(result.scores[k]))
            names = getattr(result, "labels", ())
            labels.append(names[k] if names else "")
    height, width = image.size
    if not masks:
        return Detections.empty(image.size, classes=(f"level {level}",))
    stacked = torch.stack(masks)
    score_t = torch.tensor(scores, device=stacked.device)
    areas = stacked.flatten(1).sum(1)
    keep = (score_t >= pred_iou_thresh) & (areas > max(min_area, 0))
    stacked, score_t = stacked[keep], score_t[keep]
    labels = [name for name, k in zip(labels, keep.tolist(), strict=True) if k]
    boxes = masks_to_boxes(stacked)
    order = nms(boxes.float().cpu(), score_t.float().cpu(), box_nms_thresh).to(stacked.device)
    stacked, score_t, boxes = stacked[order], score_t[order], boxes[order]
    labels = [labels[i] for i in order.tolist()]
    if any(labels):
        classes = tuple(dict.fromkeys(name or f"level {level}" for name in labels))
        names = [name or f"level {level}" for name in labels]
    else:
        classes = (f"level {level}",)
        names = [classes[0]] * len(labels)
    class_ids = torch.tensor([classes.index(n) for n in names], dtype=torch.int64, device=stacked.device)
    return Detections(
        boxes=boxes,
        scores=score_t.float(),
        class_ids=class_ids,
        classes=classes,
        phrases=tuple(names),
        image_size=(height, width),
        masks=stacked,
        mask_scores=score_t.float(),
    )
