"""Mask outlines for the labeling tools: COCO-style polygons (:func:`grounded.tasks.datasets.coco_polygons`,
pixel-corner convention, holes bridged to their part), optionally simplified."""

from __future__ import annotations

import numpy as np

__all__ = ["outline_polygons"]


def outline_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[np.ndarray]:
    """A mask's polygons as ``(N, 2)`` pixel ``x, y`` arrays (``N >= 3``); a simple ring (no hole bridged into
    it: no vertex visited twice) is simplified by Douglas-Peucker within ``tolerance`` pixels (0: as traced).
    Bridged rings are kept as traced, since simplifying them could cross a bridge and flip what the even-odd
    rule fills."""
    from skimage.measure import approximate_polygon

    from grounded.tasks.datasets import coco_polygons

    out = []
    for flat in coco_polygons(np.asarray(mask, dtype=bool)):
        ring = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
        simple = len(np.unique(ring.round(6), axis=0)) == len(ring)
        if tolerance > 0 and len(ring) > 3 and simple:
            closed = approximate_polygon(np.vstack([ring, ring[:1]]), tolerance)[:-1]
            ring = closed if len(closed) >= 3 else ring
        if len(ring) >= 3:
            out.append(ring)
    return out
