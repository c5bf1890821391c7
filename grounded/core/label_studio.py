"""Detections as Label Studio regions (pre-annotations): brush masks in Label Studio's own RLE, or polygons.

:func:`label_studio_regions` turns COCO-style records (``category``, ``score``, ``segmentation`` RLE, as
:meth:`grounded.core.detections.Detections.to_coco_records` makes them) into the ``result`` list of a task's
prediction; the dataset export (``--format label-studio``) and an ML backend share it. Brush masks are in
Label Studio's RLE, the bytes label-studio-sdk's ``mask2rle`` writes (:mod:`grounded.core.brush_rle`, with
NumPy instead of its bit-by-bit Python); polygons are in percent of the image size, pixel-corner convention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

import numpy as np

from grounded.core.brush_rle import decode_brush, encode_brush
from grounded.core.rle import decode_rle

__all__ = [
    "brush_value",
    "label_config",
    "label_studio_regions",
    "polygon_value",
    "rectangle_value",
    "region_mask",
]


def rectangle_value(xywh: Sequence[float], label: str, height: int, width: int) -> dict[str, Any]:
    """A ``rectanglelabels`` value: the pixel box ``x, y, w, h`` in percent of the image."""
    x, y, w, h = (float(v) for v in xywh)
    return {
        "x": 100 * x / width,
        "y": 100 * y / height,
        "width": 100 * w / width,
        "height": 100 * h / height,
        "rotation": 0,
        "rectanglelabels": [label],
    }


def polygon_value(points: np.ndarray, label: str, height: int, width: int) -> dict[str, Any]:
    """A ``polygonlabels`` value: ``(N, 2)`` pixel ``x, y`` vertices in percent of the image."""
    percent = (np.asarray(points, dtype=np.float64) / np.array([width, height]) * 100).clip(0, 100)
    return {"points": percent.round(4).tolist(), "closed": True, "polygonlabels": [label]}


def brush_value(mask: np.ndarray, label: str) -> dict[str, Any]:
    """A ``brushlabels`` value: the mask in Label Studio's RLE (the bytes of label-studio-sdk's ``mask2rle``)."""
    return {"format": "rle", "rle": encode_brush(np.asarray(mask, dtype=bool)), "brushlabels": [label]}


def label_studio_regions(
    records: Sequence[Mapping[str, Any]],
    height: int,
    width: int,
    *,
    masks: Sequence[np.ndarray] | None = None,
    kind: Literal["brush", "polygon"] = "brush",
    from_name: str = "label",
    box_name: str = "box",
    to_name: str = "image",
) -> list[dict[str, Any]]:
    """One region per record: ``brushlabels`` (``kind="brush"``) or ``polygonlabels`` (one region per part);
    ``masks`` (decoded) saves decoding each record's RLE again; a record without a mask becomes a
    ``rectanglelabels`` region (``box_name``) of its ``bbox``. Names match :func:`label_config`."""
    regions: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        base = {
            "from_name": from_name,
            "to_name": to_name,
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "score": float(rec.get("score", 1.0)),
        }
        label = rec["category"]
        if masks is None and "segmentation" not in rec:
            value = rectangle_value(rec["bbox"], label, height, width)
            regions.append(
                {**base, "from_name": box_name, "id": f"r{i}", "type": "rectanglelabels", "value": value}
            )
            continue
        mask = masks[i] if masks is not None else decode_rle(rec["segmentation"])
        if kind == "brush":
            regions.append({**base, "id": f"r{i}", "type": "brushlabels", "value": brush_value(mask, label)})
        else:
            from grounded.core.polygons import mask_polygons

            for k, poly in enumerate(mask_polygons(mask, "corner", join="holes")):
                value = polygon_value(poly, label, height, width)
                regions.append({**base, "id": f"r{i}_{k}", "type": "polygonlabels", "value": value})
    return regions


def region_mask(region: Mapping[str, Any]) -> np.ndarray:
    """The boolean mask of a brush region (as label-studio-sdk's ``decode_rle`` reads it)."""
    height, width = int(region["original_height"]), int(region["original_width"])
    flat = decode_brush(region["value"]["rle"])
    return np.reshape(flat, (height, width, 4))[:, :, 3] > 0


def label_config(categories: Sequence[str], kind: Literal["brush", "polygon"] = "brush") -> str:
    """A labeling config for these classes: an ``Image`` and ``BrushLabels`` (or ``PolygonLabels``) plus
    ``RectangleLabels`` for box-only regions."""
    tag = "BrushLabels" if kind == "brush" else "PolygonLabels"
    labels = "".join(f"    <Label value={quoteattr(name)}/>\n" for name in categories)
    return (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        f'  <{tag} name="label" toName="image">\n{labels}  </{tag}>\n'
        f'  <RectangleLabels name="box" toName="image">\n{labels}  </RectangleLabels>\n'
        "</View>\n"
    )
