"""Detections and masks as Label Studio regions (the ``result`` items of a prediction), in percent of the image.

The values are :mod:`grounded.core.label_studio`'s (shared with ``grounded annotate --format label-studio``):
brush masks in the bytes label-studio-sdk's own encoder writes (:mod:`grounded.core.brush_rle`), polygons the mask's contours (pixel-corner convention)
as ``[x%, y%]`` points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from grounded.core.detections import Detections
from grounded.core.label_studio import brush_value, polygon_value, rectangle_value

__all__ = ["brush_region", "detection_regions", "polygon_regions", "rectangle_region"]


def _base(kind: str, from_name: str, to_name: str, size: tuple[int, int], score: float) -> dict[str, Any]:
    height, width = size
    return {
        "from_name": from_name,
        "to_name": to_name,
        "type": f"{kind}labels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": round(float(score), 6),
    }


def rectangle_region(
    box: Sequence[float], label: str, score: float, from_name: str, to_name: str, size: tuple[int, int]
) -> dict[str, Any]:
    """An xyxy pixel box as a ``rectanglelabels`` region."""
    x0, y0, x1, y1 = (float(v) for v in box)
    value = rectangle_value((x0, y0, x1 - x0, y1 - y0), label, *size)
    return {**_base("rectangle", from_name, to_name, size, score), "value": value}


def polygon_regions(
    mask: np.ndarray, label: str, score: float, from_name: str, to_name: str, tolerance: float = 0.0
) -> list[dict[str, Any]]:
    """A mask's regions as ``polygonlabels`` regions, one per polygon (holes bridged, as in COCO polygons)."""
    from grounded.integrations.shapes import outline_polygons

    size = (int(mask.shape[0]), int(mask.shape[1]))
    base = _base("polygon", from_name, to_name, size, score)
    return [
        {**base, "value": polygon_value(ring, label, *size)} for ring in outline_polygons(mask, tolerance)
    ]


def brush_region(mask: np.ndarray, label: str, score: float, from_name: str, to_name: str) -> dict[str, Any]:
    """A mask as a ``brushlabels`` region in Label Studio's RLE."""
    size = (int(mask.shape[0]), int(mask.shape[1]))
    return {**_base("brush", from_name, to_name, size, score), "value": brush_value(mask, label)}


def detection_regions(
    det: Detections, kind: str, from_name: str, to_name: str, min_score: float | None = None
) -> list[dict[str, Any]]:
    """One region per detection (``rectangle`` / ``brush``) or per polygon (``polygon``), labelled with the
    detection's class (the ontology's class: a label value of the control); detections under ``min_score``
    and empty masks are left out."""
    out: list[dict[str, Any]] = []
    boxes = det.boxes.detach().cpu().tolist()
    for i in range(len(det)):
        score = float(det.scores[i])
        if min_score is not None and score < min_score:
            continue
        label = det.classes[int(det.class_ids[i])]
        if kind == "rectangle":
            out.append(rectangle_region(boxes[i], label, score, from_name, to_name, det.image_size))
            continue
        mask = det.mask_array(i)
        if not mask.any():
            continue
        if kind == "polygon":
            out += polygon_regions(mask, label, score, from_name, to_name)
        else:
            out.append(brush_region(mask, label, score, from_name, to_name))
    return out
