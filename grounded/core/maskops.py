"""Mask operations between a segmenter and an inpainter: pick instances, union, fill holes, erode, dilate, feather.

All functions are pure and work on numpy arrays: ``(H, W)`` bool masks in, bool masks (or a float ``alpha``) out.
Distances are Euclidean (``scipy.ndimage.distance_transform_edt``), so dilating by ``r`` pixels grows a mask by
a disk of radius ``r``, whatever the image size; they are computed in strips of rows (each with a halo of the
radius), which gives the same values as on the whole mask with memory bounded by :data:`STRIP_PIXELS`. :func:`edit_mask` chains them in a fixed order and returns an
:class:`EditMask`, the value the ``mask_ops`` adapter hands to an inpainter.

The image border is not treated as background: an object cut off by the frame is not eroded from the frame
inwards (eroding it would leave an unedited strip along the border).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from grounded.core.detections import Detections

__all__ = [
    "EditMask",
    "Pick",
    "bounding_box",
    "dilate",
    "edit_mask",
    "erode",
    "feather",
    "fill_holes",
    "pick_instances",
    "union",
]

#: pixels of one strip of the distance transforms (about 20 bytes a pixel of scratch memory)
STRIP_PIXELS = 4_000_000

Pick = Literal["all", "largest", "best"]
PICKS: tuple[str, ...] = ("all", "largest", "best")


@dataclass(frozen=True, eq=False)
class EditMask:
    """The region of one image that an inpainter may change.

    Attributes:
        region: ``(H, W)`` bool, the selected instances after hole filling, erosion and dilation: repainted
            entirely.
        alpha: ``(H, W)`` float32 blend weight of the generated pixels: 1 on ``region``, falling smoothly to
            0 over the feather band around it, and exactly 0 everywhere else. Pixels where ``alpha == 0`` are
            never changed.
        selected: indices (into the image's detections) of the instances that were used.
        labels: the class name of each selected instance.
        reason: why nothing was selected (empty when something was).
    """

    region: np.ndarray = field(repr=False)
    alpha: np.ndarray = field(repr=False)
    selected: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()
    reason: str = ""

    def __post_init__(self) -> None:
        if self.region.ndim != 2 or self.region.dtype != np.bool_:
            raise ValueError(
                f"region must be a (H, W) bool array, got {self.region.dtype} {self.region.shape}"
            )
        if self.alpha.shape != self.region.shape or self.alpha.dtype != np.float32:
            raise ValueError(f"alpha must be float32 of shape {self.region.shape}")

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return int(self.region.shape[0]), int(self.region.shape[1])

    @property
    def support(self) -> np.ndarray:
        """``(H, W)`` bool: every pixel the edit may change (``alpha > 0``)."""
        return np.asarray(self.alpha > 0)

    @property
    def empty(self) -> bool:
        """Whether nothing is to be changed."""
        return not bool(self.alpha.any())

    @classmethod
    def nothing(cls, image_size: tuple[int, int], reason: str) -> EditMask:
        """An empty edit mask for an image of ``(height, width)``, with the reason nothing was selected."""
        return cls(
            region=np.zeros(image_size, dtype=bool),
            alpha=np.zeros(image_size, dtype=np.float32),
            reason=reason,
        )


# ---------------------------------------------------------------------- pure operations
def _check(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _check_pixels(value: float, name: str) -> float:
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number of pixels, got {value!r}")
    return float(value)


def union(masks: np.ndarray | Sequence[np.ndarray], image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Union of ``(N, H, W)`` masks; ``image_size`` gives the shape when there are none."""
    stack = np.asarray(masks, dtype=bool)
    if stack.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {stack.shape}")
    if stack.shape[0] == 0:
        if image_size is None and stack.shape[1:] == (0, 0):
            raise ValueError("the union of no masks needs image_size")
        return np.zeros(image_size or stack.shape[1:], dtype=bool)
    return np.asarray(stack.any(axis=0))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a mask (background regions not connected to the image border)."""
    return np.asarray(ndimage.binary_fill_holes(_check(mask)))


def _distance_to(targets: np.ndarray, limit: float) -> np.ndarray:
    """float32 Euclidean distance of every pixel to the nearest ``True`` pixel of ``targets`` (0 on them), exact
    up to ``limit``; a larger value only means "farther than ``limit``" (``inf`` where no target is near).

    Computed in strips of rows with a halo of ``limit`` rows: a target within ``limit`` of a pixel lies in its
    strip, so every distance up to ``limit`` is the whole-mask one.
    """
    height, width = targets.shape
    halo = int(np.ceil(limit)) + 1
    rows = max(1, STRIP_PIXELS // max(width, 1))
    out = np.empty((height, width), dtype=np.float32)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        a, b = max(0, y0 - halo), min(height, y1 + halo)
        strip = targets[a:b]
        if strip.any():
            out[y0:y1] = ndimage.distance_transform_edt(~strip)[y0 - a : y1 - a]
        else:
            out[y0:y1] = np.inf
    return out


def dilate(mask: np.ndarray, pixels: float) -> np.ndarray:
    """Grow a mask by a disk of radius ``pixels`` (every pixel within that distance of the mask)."""
    mask = _check(mask)
    radius = _check_pixels(pixels, "dilate")
    if radius == 0 or not mask.any():
        return mask.copy()
    return np.asarray(_distance_to(mask, radius) <= radius)


def erode(mask: np.ndarray, pixels: float) -> np.ndarray:
    """Shrink a mask by a disk of radius ``pixels`` (the image border does not count as background)."""
    mask = _check(mask)
    radius = _check_pixels(pixels, "erode")
    if radius == 0 or mask.all() or not mask.any():
        return mask.copy()
    return np.asarray(_distance_to(~mask, radius) > radius)


def feather(mask: np.ndarray, pixels: float) -> np.ndarray:
    """Float32 blend weights: 1 on the mask, falling smoothly (smoothstep) to 0 within ``pixels`` outside it.

    The result is exactly 0 at every pixel farther than ``pixels`` from the mask, so an edit blended with it
    never touches those pixels; ``pixels=0`` returns the hard mask as 0/1.
    """
    mask = _check(mask)
    width = _check_pixels(pixels, "feather")
    if width == 0 or not mask.any():
        return mask.astype(np.float32)
    distance = _distance_to(mask, width)
    outside = distance > width
    # smoothstep of t = clip(1 - d / (width + 1)), computed in place in float32 (a few bytes a pixel)
    t = np.subtract(1.0, distance / np.float32(width + 1.0), dtype=np.float32)
    del distance
    np.clip(t, 0.0, 1.0, out=t)
    alpha = np.multiply(t, -2.0, dtype=np.float32)
    alpha += 3.0
    alpha *= t
    alpha *= t
    alpha[mask] = 1.0
    alpha[outside] = 0.0  # exact zero outside the band, whatever the rounding
    return alpha


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of a mask's pixels (end-exclusive), or ``None`` for an empty mask."""
    mask = _check(mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def pick_instances(
    areas: Sequence[int] | np.ndarray,
    scores: np.ndarray,
    pick: Pick = "all",
    indices: Sequence[int] | None = None,
    min_score: float = 0.0,
) -> tuple[list[int], str]:
    """Choose instances by their mask ``areas`` (foreground pixels) and ``scores``: ``(chosen indices, reason
    if none)``.

    Applied in order: ``indices`` (positions in the detections as given; out-of-range positions select
    nothing), ``min_score``, instances with an empty mask dropped, then ``pick``: ``"all"`` keeps every
    remaining instance, ``"largest"`` the one with the most mask pixels, ``"best"`` the highest score.
    """
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {', '.join(PICKS)}, got {pick!r}")
    n = len(scores)
    if n == 0:
        return [], "no detections"
    chosen = list(range(n))
    if indices is not None:
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad:
            return [], f"index {bad[0]} is out of range ({n} detection{'s' if n != 1 else ''})"
        chosen = sorted({int(i) for i in indices})
    chosen = [i for i in chosen if float(scores[i]) >= min_score]
    if not chosen:
        return [], f"no detection scores at least {min_score:g}"
    chosen = [i for i in chosen if areas[i] > 0]
    if not chosen:
        return [], "the selected masks are empty"
    if pick == "largest":
        chosen = [max(chosen, key=lambda i: (int(areas[i]), -i))]
    elif pick == "best":
        chosen = [max(chosen, key=lambda i: (float(scores[i]), -i))]
    return chosen, ""


def edit_mask(
    detections: Detections,
    *,
    pick: Pick = "all",
    indices: Sequence[int] | None = None,
    min_score: float = 0.0,
    fill: bool = True,
    erode_pixels: float = 0,
    dilate_pixels: float = 0,
    feather_pixels: float = 0,
) -> EditMask:
    """The edit region of one image: pick instances, take their union, fill holes, erode, dilate, feather.

    The morphology runs inside the instances' bounding box grown by the dilation and feather widths (plus a
    margin), which gives the same result as on the whole image at a fraction of the cost. Masks are read one
    at a time (dense or RLE), so memory holds the union, never every instance at full resolution.
    """
    if len(detections) == 0:
        return EditMask.nothing(detections.image_size, "no detections")
    if not detections.has_masks:
        raise ValueError("mask operations need masks: put a segmenter (sam, sam_hq) before mask_ops")
    size = detections.image_size
    scores = detections.scores.detach().float().cpu().numpy()
    chosen, reason = pick_instances(detections.mask_areas(), scores, pick, indices, min_score)
    if not chosen:
        return EditMask.nothing(size, reason)
    region = np.zeros(size, dtype=bool)
    for i in chosen:
        region |= detections.mask_array(i)
    box = bounding_box(region)
    assert box is not None  # pick_instances drops empty masks
    margin = int(np.ceil(dilate_pixels + feather_pixels)) + 2
    y0, y1 = max(0, box[0] - margin), min(size[0], box[1] + margin)
    x0, x1 = max(0, box[2] - margin), min(size[1], box[3] + margin)
    local = region[y0:y1, x0:x1]
    if fill:
        local = fill_holes(local)
    local = dilate(erode(local, erode_pixels), dilate_pixels)
    alpha_local = feather(local, feather_pixels)
    region = np.zeros(size, dtype=bool)
    region[y0:y1, x0:x1] = local
    alpha = np.zeros(size, dtype=np.float32)
    alpha[y0:y1, x0:x1] = alpha_local
    labels = tuple(detections.classes[int(detections.class_ids[i])] for i in chosen)
    if not region.any():
        return EditMask.nothing(size, f"erode={erode_pixels:g} removed the whole mask")
    return EditMask(region=region, alpha=alpha, selected=tuple(chosen), labels=labels)
