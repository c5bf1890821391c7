"""Full-resolution inpainting: a context window around the mask, the model's working size, an exact paste-back.

An image is never squashed to the model's square size. Instead:

1. :func:`plan_window` takes the bounding box of the pixels to change (``alpha > 0``), adds ``padding`` pixels of
   context on each side (inside the image), and chooses a **working size**: the model's native area
   (``resolution``\\ ²), the window's aspect ratio, both sides multiples of ``multiple`` (8 for Stable
   Diffusion), and each side between ``resolution / 4`` and ``2 * resolution``. The window then grows, centred
   on the mask and shifted to stay inside the image, until its aspect ratio equals the working size's; where
   the image is too small for that (a 60×900 strip), the missing context is mirrored (reflection padding), so
   the picture is never stretched.
2. :func:`crop_window` cuts that window (mirroring beyond the border) and resizes it to the working size;
   :func:`working_mask` resizes the mask so that every working pixel touching the edit region is masked
   (rounded up to whole latent cells).
3. :func:`paste_back` resizes the generated window to the window's size and blends it into the image with the
   feathered ``alpha``: ``round(alpha * generated + (1 - alpha) * original)``. Pixels where ``alpha == 0`` are
   copied from the input, so they stay **bit-identical**, and the output always has the input's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from grounded.core.maskops import bounding_box

__all__ = ["Window", "crop_window", "paste_back", "plan_window", "working_mask"]

_RESAMPLE = Image.Resampling.LANCZOS
_BLEND_PIXELS = 1 << 21  # pixels blended at once (float64: about 100 MB of temporaries)


@dataclass(frozen=True)
class Window:
    """Where and at which size an edit is computed.

    Attributes:
        y0, y1, x0, x1: the window in image pixels, end-exclusive; it may extend past the image (those pixels are
            mirrored from inside it).
        height, width: the working size fed to the model (multiples of the model's ``multiple``).
    """

    y0: int
    y1: int
    x0: int
    x1: int
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        """The window's ``(height, width)`` in image pixels."""
        return self.y1 - self.y0, self.x1 - self.x0

    def describe(self, image_size: tuple[int, int] | None = None) -> str:
        """E.g. ``"412x380 window at (96,40), working size 520x480"``."""
        h, w = self.size
        text = f"{w}x{h} window at ({self.x0},{self.y0}), working size {self.width}x{self.height}"
        if image_size is not None and (
            self.y0 < 0 or self.x0 < 0 or self.y1 > image_size[0] or self.x1 > image_size[1]
        ):
            text += " (mirrored past the image border)"
        return text


def _round_to(value: float, multiple: int, low: int, high: int) -> int:
    return int(min(high, max(low, multiple * round(value / multiple))))


def _place(start: int, length: int, want: int, limit: int) -> tuple[int, int]:
    """Grow ``[start, start + length)`` to ``want`` pixels, centred, shifted to stay inside ``[0, limit)`` when
    it fits; a window longer than ``limit`` is centred on the image (its overhang is mirrored)."""
    if want <= length:
        return start, start + length
    if want >= limit:
        lo = (limit - want) // 2
        return lo, lo + want
    lo = start - (want - length) // 2
    lo = min(max(lo, 0), limit - want)
    return lo, lo + want


def plan_window(support: np.ndarray, resolution: int, multiple: int = 8, padding: int = 32) -> Window | None:
    """The crop window and working size for the pixels in ``support`` (``None`` when it is empty)."""
    if resolution < 4 * multiple or resolution % multiple:
        raise ValueError(f"resolution must be a multiple of {multiple} and at least {4 * multiple}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    box = bounding_box(support)
    if box is None:
        return None
    height, width = support.shape
    y0, y1 = max(0, box[0] - padding), min(height, box[1] + padding)
    x0, x1 = max(0, box[2] - padding), min(width, box[3] + padding)
    h, w = y1 - y0, x1 - x0
    low, high = max(multiple, _round_to(resolution / 4, multiple, multiple, resolution)), 2 * resolution
    scale = resolution / math.sqrt(h * w)  # the model's native area at the window's aspect ratio
    work_h = _round_to(h * scale, multiple, low, high)
    work_w = _round_to(w * scale, multiple, low, high)
    aspect = work_w / work_h
    if w / h < aspect:  # too narrow for the working size: widen the window
        want_w, want_h = math.ceil(h * aspect), h
    else:
        want_w, want_h = w, math.ceil(w / aspect)
    y0, y1 = _place(y0, h, want_h, height)
    x0, x1 = _place(x0, w, want_w, width)
    return Window(y0=y0, y1=y1, x0=x0, x1=x1, height=work_h, width=work_w)


def _take(array: np.ndarray, window: Window) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` with reflection padding where the window leaves the image."""
    height, width = array.shape[:2]
    top, left = max(0, -window.y0), max(0, -window.x0)
    bottom, right = max(0, window.y1 - height), max(0, window.x1 - width)
    inside = array[max(0, window.y0) : min(height, window.y1), max(0, window.x0) : min(width, window.x1)]
    if not (top or left or bottom or right):
        return np.ascontiguousarray(inside)
    pad = [(top, bottom), (left, right)] + [(0, 0)] * (array.ndim - 2)
    if min(inside.shape[:2]) > 1:
        return np.ascontiguousarray(np.pad(inside, pad, mode="reflect"))
    return np.ascontiguousarray(np.pad(inside, pad, mode="edge"))  # reflection needs two pixels to mirror


def crop_window(pixels: np.ndarray, window: Window) -> Image.Image:
    """The window of a ``(H, W, 3)`` uint8 image, resized to the working size."""
    crop = Image.fromarray(_take(pixels, window))
    if crop.size == (window.width, window.height):
        return crop
    return crop.resize((window.width, window.height), _RESAMPLE)


def working_mask(support: np.ndarray, window: Window, cell: int = 8) -> Image.Image:
    """The edit mask at the working size (``L``: 255 = repaint), covering every working pixel that touches
    ``support`` and rounded up to whole ``cell`` × ``cell`` blocks (the VAE's latent cells)."""
    crop = _take(support.astype(np.float32), window)
    resized = Image.fromarray(crop).resize((window.width, window.height), Image.Resampling.BOX)
    covered = np.asarray(resized) > 0
    if cell > 1:
        h, w = covered.shape
        ch, cw = -(-h // cell), -(-w // cell)
        padded = np.zeros((ch * cell, cw * cell), dtype=bool)
        padded[:h, :w] = covered
        blocks = padded.reshape(ch, cell, cw, cell).any(axis=(1, 3))
        covered = np.repeat(np.repeat(blocks, cell, axis=0), cell, axis=1)[:h, :w]
    return Image.fromarray(np.where(covered, 255, 0).astype(np.uint8))


def paste_back(pixels: np.ndarray, generated: np.ndarray, window: Window, alpha: np.ndarray) -> np.ndarray:
    """Blend the generated working-size window into a copy of the image.

    ``generated`` is ``(height, width, 3)`` uint8 at the working size. Only pixels with ``alpha > 0`` change;
    every other pixel is copied from ``pixels`` unchanged. Returns a new ``(H, W, 3)`` uint8 array.
    """
    if generated.shape != (window.height, window.width, 3) or generated.dtype != np.uint8:
        raise ValueError(
            f"generated must be uint8 of shape {(window.height, window.width, 3)}, "
            f"got {generated.dtype} {generated.shape}"
        )
    wh, ww = window.size
    image = Image.fromarray(generated)
    if image.size != (ww, wh):
        image = image.resize((ww, wh), _RESAMPLE)
    full = np.asarray(image)
    height, width = pixels.shape[:2]
    # the part of the window inside the image
    iy0, iy1 = max(0, window.y0), min(height, window.y1)
    ix0, ix1 = max(0, window.x0), min(width, window.x1)
    gen = full[iy0 - window.y0 : iy1 - window.y0, ix0 - window.x0 : ix1 - window.x0]
    out = np.array(pixels, dtype=np.uint8, order="C", copy=True)
    a = alpha[iy0:iy1, ix0:ix1]
    where = a > 0
    if (alpha > 0).sum() != where.sum():
        raise ValueError("the window does not contain every pixel to edit")
    original = out[iy0:iy1, ix0:ix1]
    rows = max(1, _BLEND_PIXELS // max(1, ix1 - ix0))  # float64 blending a band of rows at a time
    for r in range(0, iy1 - iy0, rows):
        band, mask = original[r : r + rows], where[r : r + rows]
        weight = a[r : r + rows][mask][:, None].astype(np.float64)
        blended = weight * gen[r : r + rows][mask].astype(np.float64) + (1.0 - weight) * band[mask].astype(
            np.float64
        )
        band[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
