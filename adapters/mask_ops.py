"""Mask operations between a segmenter and an inpainter (``mask_ops``): detections with masks → edit masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from grounded.core.detections import Detections
from grounded.core.maskops import PICKS, EditMask, Pick, edit_mask
from grounded.engine import Adapter, register_adapter

__all__ = ["MaskOps"]


@register_adapter("mask_ops")
class MaskOps(Adapter):
    """Turn each image's detections into one :class:`~grounded.core.maskops.EditMask`.

    In this order: choose instances (``indices``, then ``min_score``, then ``pick``), take the union of their
    masks, fill holes, erode, dilate, feather. No model: ``warm_up`` does nothing.

    Args:
        pick: ``"all"`` (every chosen instance), ``"largest"`` (most mask pixels) or ``"best"`` (highest score).
        indices: positions in the image's detections (the detector lists them by descending score); an
            out-of-range position selects nothing.
        min_score: drop detections scoring below this.
        fill_holes: fill holes inside the union.
        erode: pixels to shrink the union by (before dilating).
        dilate: pixels to grow it by (covers SAM's boundary errors and the object's shadow edge).
        feather: width in pixels of the soft band outside the region where the edit fades into the original;
            pixels beyond it are never changed.
    """

    outputs: ClassVar[dict[str, Any]] = {"masks": list[EditMask]}

    def __init__(
        self,
        pick: Pick = "all",
        indices: Sequence[int] | None = None,
        min_score: float = 0.0,
        fill_holes: bool = True,
        erode: int = 0,
        dilate: int = 8,
        feather: int = 8,
    ) -> None:
        if pick not in PICKS:
            raise ValueError(f"pick must be one of {', '.join(PICKS)}, got {pick!r}")
        for name, value in (("erode", erode), ("dilate", dilate), ("feather", feather)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 pixels, got {value}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must lie in [0, 1], got {min_score}")
        super().__init__()

    def masks_for(self, detections: Detections) -> EditMask:
        """The edit mask of one image."""
        return edit_mask(
            detections,
            pick=self.pick,
            indices=self.indices,
            min_score=self.min_score,
            fill=self.fill_holes,
            erode_pixels=self.erode,
            dilate_pixels=self.dilate,
            feather_pixels=self.feather,
        )

    def run(self, detections: list[Detections]) -> dict[str, Any]:
        """Port entry: one edit mask per image (empty, with a reason, where nothing is selected)."""
        return {"masks": [self.masks_for(det) for det in detections]}
