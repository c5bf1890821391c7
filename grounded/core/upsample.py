"""SAM's low-resolution mask logits → binary masks at the image size, computed only where a mask can be on.

The processor's ``post_process_masks`` upsamples every ``(256, 256)`` logit map bilinearly to the padded
``(1024, 1024)`` input, crops the resized image, upsamples again to the original size and thresholds: two
full-resolution float maps a mask (48 MB each on a 4000x3000 photo). A bilinear value is a convex
combination of low-resolution values, so it can pass the threshold only near a low-resolution value that
does: :func:`upsample_windows` finds that window per mask and computes both bilinear steps there alone, with
PyTorch's own interpolation weights (read off ``F.interpolate``), separably. Values agree with the
processor's to float rounding (the same weights, the products in another order), so a pixel can land on the
other side of the threshold only where its logit is within rounding of it (none did in the tests). A window
over most of the image (a ragged mask) is computed as the processor does, whole, and cut.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Window", "upsample_windows"]

# a window over more than this fraction of the image is computed as the processor does (F.interpolate of
# the whole mask: its optimised kernel beats per-window gathers there), then cut to the window
_WHOLE_FRACTION = 0.25


@dataclass(frozen=True)
class Window:
    """One mask's binary values inside ``rows`` x ``cols`` of the image (all False outside)."""

    index: int
    rows: tuple[int, int]  # [start, stop)
    cols: tuple[int, int]
    mask: np.ndarray  # (rows stop - start, cols stop - start) bool


@dataclass(frozen=True)
class _Taps:
    """Bilinear taps of one axis: output ``j`` = ``w0[j] * x[i0[j]] + w1[j] * x[i1[j]]`` (numpy: the
    per-mask work is small, and numpy runs it without thread-pool hand-offs)."""

    i0: np.ndarray
    i1: np.ndarray
    w0: np.ndarray
    w1: np.ndarray


@functools.lru_cache(maxsize=32)
def _taps(size_in: int, size_out: int, crop: int | None = None) -> _Taps:
    """PyTorch's bilinear (``align_corners=False``) taps from ``size_in`` to ``size_out``, the output cut to
    its first ``crop`` positions; weights as ``F.interpolate`` computes them (it interpolates one-hots)."""
    basis = torch.eye(size_in)[:, None, :, None]  # (size_in, 1, size_in, 1)
    weights = F.interpolate(basis, size=(size_out, 1), mode="bilinear", align_corners=False)[:, 0, :, 0]
    weights = weights[:, :crop] if crop is not None else weights  # (size_in, out)
    nonzero = weights != 0
    positions = torch.arange(size_in)[:, None].expand_as(weights)
    i0 = torch.where(nonzero, positions, size_in).amin(dim=0)
    i1 = torch.where(nonzero, positions, -1).amax(dim=0)
    cols = torch.arange(weights.shape[1])
    w0, w1 = weights[i0, cols], torch.where(i1 > i0, weights[i1, cols], 0.0)
    return _Taps(i0=i0.numpy(), i1=torch.maximum(i1, i0).numpy(), w0=w0.numpy(), w1=w1.numpy())


def _compose(first: _Taps, second: _Taps) -> tuple[np.ndarray, np.ndarray]:
    """For each final position, the lowest and highest low-resolution index it reads (non-decreasing)."""
    return first.i0[second.i0], first.i1[second.i1]


def _apply(x: np.ndarray, taps: _Taps, start: int, stop: int, offset: int, axis: int) -> np.ndarray:
    """Interpolate ``x`` (whose index 0 along ``axis`` is input position ``offset``) to outputs [start, stop)."""
    i0, i1 = taps.i0[start:stop] - offset, taps.i1[start:stop] - offset
    shape = [1, 1]
    shape[axis] = stop - start
    w0, w1 = taps.w0[start:stop].reshape(shape), taps.w1[start:stop].reshape(shape)
    return np.take(x, i0, axis=axis) * w0 + np.take(x, i1, axis=axis) * w1


def _span(lowest: np.ndarray, highest: np.ndarray, first: int, last: int) -> tuple[int, int]:
    """Final positions whose low-resolution reads ``[lowest, highest]`` meet ``[first, last]``."""
    start = int(np.searchsorted(highest, first))
    stop = int(np.searchsorted(lowest, last, side="right"))
    return start, max(start, stop)


def upsample_windows(
    low_res: torch.Tensor,
    padded_size: tuple[int, int],
    reshaped_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float = 0.0,
) -> Iterator[Window]:
    """SAM's ``post_process_masks`` for ``(N, h, w)`` logits, one :class:`Window` a mask (in order).

    ``padded_size``: the model input the logits cover (1024x1024); ``reshaped_size``: the resized image inside
    it; ``original_size``: the image. A mask with no logit above the threshold has an empty window.
    """
    low = low_res.detach().float().cpu()
    _, h, w = low.shape
    (ph, pw), (rh, rw), (height, width) = padded_size, reshaped_size, original_size
    rows1, cols1 = _taps(h, ph, rh), _taps(w, pw, rw)  # low → resized image (cropped out of the padding)
    same = (rh, rw) == (height, width)  # F.interpolate to the same size copies
    rows2 = None if same else _taps(rh, height)
    cols2 = None if same else _taps(rw, width)
    if rows2 is None or cols2 is None:
        row_reads, col_reads = (rows1.i0, rows1.i1), (cols1.i0, cols1.i1)
    else:
        row_reads, col_reads = _compose(rows1, rows2), _compose(cols1, cols2)
    # a convex combination of values at or below the threshold stays there (a margin for rounding)
    margin = 1e-4 * max(1.0, abs(threshold)) if threshold else 0.0
    above = low > threshold - margin
    on_rows, on_cols = above.any(dim=2).numpy(), above.any(dim=1).numpy()  # (N, h), (N, w)
    values_all = low.numpy()
    empty = np.zeros((0, 0), dtype=bool)
    for index in range(len(values_all)):
        found_rows, found_cols = np.flatnonzero(on_rows[index]), np.flatnonzero(on_cols[index])
        if not len(found_rows):
            yield Window(index, (0, 0), (0, 0), empty)
            continue
        r0, r1 = _span(*row_reads, int(found_rows[0]), int(found_rows[-1]))
        c0, c1 = _span(*col_reads, int(found_cols[0]), int(found_cols[-1]))
        if r0 >= r1 or c0 >= c1:
            yield Window(index, (0, 0), (0, 0), empty)
            continue
        if rows2 is None or cols2 is None:
            mid_rows, mid_cols = (r0, r1), (c0, c1)
        else:
            mid_rows = (int(rows2.i0[r0]), int(rows2.i1[r1 - 1]) + 1)
            mid_cols = (int(cols2.i0[c0]), int(cols2.i1[c1 - 1]) + 1)
        lr0, lr1 = int(rows1.i0[mid_rows[0]]), int(rows1.i1[mid_rows[1] - 1]) + 1
        lc0, lc1 = int(cols1.i0[mid_cols[0]]), int(cols1.i1[mid_cols[1] - 1]) + 1
        if (r1 - r0) * (c1 - c0) > _WHOLE_FRACTION * height * width:  # most of the image: the processor's
            whole = F.interpolate(low[index][None, None], (ph, pw), mode="bilinear", align_corners=False)
            whole = whole[..., :rh, :rw]
            if not same:
                whole = F.interpolate(whole, (height, width), mode="bilinear", align_corners=False)
            on = (whole[0, 0, r0:r1, c0:c1] > threshold).numpy()
            yield Window(index, (r0, r1), (c0, c1), on)
            continue
        values = values_all[index, lr0:lr1, lc0:lc1]
        steps = [(cols1, *mid_cols, lc0, 1), (rows1, *mid_rows, lr0, 0)]  # width first, as PyTorch nests
        if rows2 is not None and cols2 is not None:
            steps += [(cols2, c0, c1, mid_cols[0], 1), (rows2, r0, r1, mid_rows[0], 0)]
        for taps, start, stop, offset, axis in steps:
            values = _apply(values, taps, start, stop, offset, axis)
        on = values > threshold
        yield Window(index, (r0, r1), (c0, c1), on)
