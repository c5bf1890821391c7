"""Masks to polygons with OpenCV's contour tracer (``cv2.findContours``), in the two conventions readers use.

**Centre convention** (YOLO segmentation; the readers are ultralytics' ``polygon2mask`` and supervision, which
fill with ``cv2.fillPoly``): vertex ``(x, y)`` is the centre of pixel row ``y``, column ``x``. The traced ring
runs through the mask's boundary pixels, so ``cv2.fillPoly`` (which fills the boundary too) gives the mask
back exactly.

**Corner convention** (COCO; the reader is ``pycocotools``, which datumaro, torchvision and detectron2 call):
pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)`` and a pixel is inside when its centre is. Rings run a quarter
pixel inside the outline of the pixel squares, through the quarter points ``(c + 1/4 or 3/4, r + 1/4 or 3/4)``:
``pycocotools`` gives the mask back exactly. They are the rings OpenCV traces on the mask upsampled 2x, derived
from the trace of the mask itself (each boundary pixel's quarter points follow from the directions the trace
comes in and goes out by: ``_QUARTER_TABLE``, a table ``tests/test_polygons.py`` re-derives from OpenCV's own 2x
trace), so the tracer reads a quarter of the pixels.

A mask of several parts, or with holes, is a list of :class:`Part` (outer ring, hole rings), from OpenCV's
two-level hierarchy (``RETR_CCOMP``: a part inside a hole is a part again). :func:`join_rings` walks several
rings as one polygon with zero-width bridges (out and back) between rings, as ultralytics'
``merge_multi_segment`` does; under the even-odd fill of ``cv2.fillPoly`` and ``pycocotools`` a hole joined to
its outer ring stays open. A bridge across the background is drawn by ``cv2.fillPoly`` as a 1-pixel line, the
one loss of a joined polygon.

Everything after the tracer works on all rings at once in NumPy / SciPy (no Python loop over rings): the
bridges are searched from each ring's four extreme pixels along their row or column, the tree of bridges is a
minimum spanning tree (``scipy.sparse.csgraph``), and its depth-first walk is ordered by ranking the tour's
steps (pointer jumping). On a ragged mask the grid's boundary-pixel lists the bridge search reads are made on a
side thread while OpenCV traces (both release the GIL; a forked child makes its own thread).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal, NamedTuple

import numpy as np

__all__ = ["Convention", "Part", "join_rings", "mask_parts", "mask_polygons"]

Convention = Literal["centre", "corner"]


@dataclass(frozen=True)
class Part:
    """One connected part of a mask: its outer ring and its holes, each a ``(N, 2)`` float array of ``x, y``."""

    outer: np.ndarray
    holes: tuple[np.ndarray, ...] = ()

    @property
    def rings(self) -> list[np.ndarray]:
        return [self.outer, *self.holes]


class _Rings(NamedTuple):
    """Traced rings as flat arrays: ring ``i`` is points ``starts[i]`` to ``starts[i] + sizes[i] - 1`` of
    ``x``, ``y`` (integer grid points). ``px``, ``py`` are the rings' boundary pixels in the mask's own grid
    (where bridges are searched), ``pixel_ring`` their ring, ``pixel_point`` the point a bridge from that
    pixel starts at and ``pixel_starts`` where each ring's pixels start."""

    x: np.ndarray
    y: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    links: np.ndarray  # OpenCV's hierarchy: next, previous, first child, parent
    px: np.ndarray
    py: np.ndarray
    pixel_ring: np.ndarray
    pixel_point: np.ndarray
    pixel_starts: np.ndarray
    scale: float
    shift: np.ndarray
    grid: np.ndarray | None = None  # the image the pixels are in (None: bridges are weighed by length only)
    border: Future[tuple[np.ndarray, np.ndarray | None]] | None = None  # grid's _border_lists, if started


def mask_parts(mask: np.ndarray, convention: Convention = "centre", tolerance: float = 0.0) -> list[Part]:
    """The parts of a boolean ``(H, W)`` mask, each with its outer ring and holes, in ``convention``.

    ``tolerance`` > 0 simplifies each ring (Douglas-Peucker, ``cv2.approxPolyDP``, in pixels); else only
    vertices where the boundary turns are kept.
    """
    rings = _trace(mask, convention)
    if rings is None:
        return []
    links = rings.links

    def ring(i: int) -> np.ndarray:
        span = slice(int(rings.starts[i]), int(rings.starts[i] + rings.sizes[i]))
        points = np.stack([rings.x[span], rings.y[span]], axis=1)
        return _simplify(points, tolerance / rings.scale) * rings.scale + rings.shift

    parts = []
    for i in np.flatnonzero(links[:, 3] < 0).tolist():
        holes = []
        child = int(links[i, 2])
        while child != -1:
            holes.append(ring(child))
            child = int(links[child, 0])
        parts.append(Part(ring(i), tuple(holes)))
    return parts


def mask_polygons(
    mask: np.ndarray, convention: Convention = "centre", join: Literal["holes", "all"] = "holes"
) -> list[np.ndarray]:
    """Polygons of a mask for writers, as ``(N, 2)`` arrays: ``join="holes"``: one polygon per part, the part's
    holes joined to its outer ring (COCO: a list of polygons is filled as their union); ``"all"``: one polygon
    of every ring (YOLO: one line per instance). Only the vertices where a ring turns are kept (and the ends
    of its bridges)."""
    if join not in ("holes", "all"):
        raise ValueError(f"join must be 'holes' or 'all', got {join!r}")
    if convention not in ("centre", "corner"):
        raise ValueError(f"convention must be 'centre' or 'corner', got {convention!r}")
    quarters = convention == "corner"
    rings = _trace(mask, "centre", border_columns=not quarters)
    if rings is None:
        return []
    out, into = _pixel_keys(rings.px, rings.py, rings.starts, rings.sizes)
    key = into * 9 + out if quarters else None  # the quarter tables' key of each pixel
    if key is not None and not _COUNT[key].all():  # not in the table (none is known): upsampled 2x
        upsampled = _trace(mask, "corner")
        assert upsampled is not None  # the same mask, traced
        rings, quarters = upsampled, False
        out, into = _pixel_keys(rings.px, rings.py, rings.starts, rings.sizes)
    n = len(rings.sizes)
    parent = rings.links[:, 3]
    if join == "holes":
        roots = np.flatnonzero(parent < 0)
        rank = np.full(n, -1, dtype=np.int64)
        rank[roots] = np.arange(len(roots))
        group = np.where(parent < 0, rank, rank[np.maximum(parent, 0)])
    else:
        roots = np.zeros(1, dtype=np.int64)
        group = np.zeros(n, dtype=np.int64)
    starts = rings.starts
    if n > len(roots):
        tree = _bridge_tree(rings, group, roots, columns=not quarters, out=out)
        forced = np.concatenate([tree[2], tree[3], starts[roots]])
    else:
        tree, forced = None, starts[roots]
    scale, (sx, sy) = rings.scale, rings.shift
    if quarters:  # the corners of the corner-convention rings, straight from the trace
        x, y, position, sizes = _kept_quarters(rings.x, rings.y, starts, rings.sizes, forced, out, into, key)
        scale, sx, sy = 0.5, sx + 0.25, sy + 0.25
        at_lo, at_hi = (position[tree[2]], position[tree[3]]) if tree is not None else (None, None)
    else:
        chosen = _turning(rings.x, rings.y, starts, rings.sizes, forced, out, into)
        sizes = np.diff(np.searchsorted(chosen, np.append(starts, len(rings.x))))
        x, y = rings.x[chosen], rings.y[chosen]
        # where the bridges' (kept) points are among the kept points
        at_lo, at_hi = (
            (np.searchsorted(chosen, tree[2]), np.searchsorted(chosen, tree[3]))
            if tree is not None
            else (None, None)
        )

    kept = rings._replace(x=x, y=y, starts=np.cumsum(sizes) - sizes, sizes=sizes)
    if tree is None:
        index, lengths = _one_ring_each(kept, roots)
    else:
        assert at_lo is not None and at_hi is not None
        index, lengths = _walk(kept, group, roots, tree[0], tree[1], at_lo, at_hi)
    points = np.empty((len(index), 2))
    np.multiply(kept.x[index], scale, out=points[:, 0])
    np.multiply(kept.y[index], scale, out=points[:, 1])
    points += (sx, sy)
    bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    return [points[a:b] for a, b in pairwise(bounds)]


def join_rings(rings: list[np.ndarray]) -> np.ndarray:
    """Several rings of integer grid points as one ``(N, 2)`` polygon, walked as a tree of bridges.

    A bridge joins a ring's extreme point (leftmost, rightmost, topmost, bottommost) to the next point of
    another ring along that point's row or column, so it crosses no other ring; the minimum spanning tree of
    the rings over these bridges (rings no bridge reaches are joined from their first point) is walked
    depth-first from ring 0: each ring is entered at its bridge point and walked all round, leaving for each
    child ring at that child's bridge point and coming back, so every bridge is walked out and back (zero
    width) and every ring once.
    """
    if not rings:
        return np.zeros((0, 2))
    if len(rings) == 1:
        return np.asarray(rings[0])
    points = np.concatenate([np.asarray(r).reshape(-1, 2) for r in rings]).astype(np.int64)
    sizes = np.array([len(r) for r in rings], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    n = len(rings)
    x, y = points[:, 0].copy(), points[:, 1].copy()
    owner = np.repeat(np.arange(n), sizes)
    links = np.full((n, 4), -1, dtype=np.int64)
    flat = _Rings(x, y, starts, sizes, links, x, y, owner, np.arange(len(x)), starts, 1.0, np.zeros(2))
    group, roots = np.zeros(n, dtype=np.int64), np.zeros(1, dtype=np.int64)
    index, _ = _walk(flat, group, roots, *_bridge_tree(flat, group, roots))
    return points[index]


# ---------------------------------------------------------------------- tracing
#: corner convention: the quarter points a boundary pixel of the trace contributes, in order, keyed by the
#: direction the trace comes in by and the one it goes out by (``_direction``, 0-8; 4 4: a ring of one pixel).
#: ``KEY:QUARTERS``, quarter ``q`` is the 2x-grid offset ``(q % 2, q // 2)`` within the pixel (each a step
#: round the cycle 3 1 0 2). Derived from OpenCV's trace of the mask upsampled 2x, which it reproduces point for
#: point; ``tests/test_polygons.py`` derives it again and compares.
_QUARTER_TABLE = (
    "00:310 01:31 02:31 03:310 06:3102 07:3102 08:31023 10:310 11:31 12:31 13:310 16:3102 17:3102 20:2310 "
    "21:231 22:231 23:2310 25:23 26:23102 28:23 30:10 33:10 35:1023 36:102 37:102 38:1023 44:0231 50:2310 "
    "51:231 52:231 53:2310 55:23 58:23 60:10 62:10231 63:10 65:1023 66:102 67:102 68:1023 71:0231 72:0231 "
    "75:023 76:02 77:02 78:023 80:02310 81:0231 82:0231 85:023 86:02 87:02 88:023"
)


def _quarter_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_QUARTER_TABLE`` as arrays indexed by ``9 * in + out``: how many quarter points, and (at ``5 * key +
    k``) the x and y offsets of the k-th."""
    count = np.zeros(81, dtype=np.int64)
    dx = np.zeros(81 * 5, dtype=np.int64)
    dy = np.zeros(81 * 5, dtype=np.int64)
    for entry in _QUARTER_TABLE.split():
        key, quarters = entry.split(":")
        k = int(key[0]) * 9 + int(key[1])
        count[k] = len(quarters)
        for j, q in enumerate(quarters):
            dx[5 * k + j], dy[5 * k + j] = int(q) % 2, int(q) // 2
    return count, dx, dy


_COUNT, _QUARTER_X, _QUARTER_Y = _quarter_tables()


def _turn_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which of a pixel's quarter points are corners of the corner-convention ring (where it turns), as a bit
    mask indexed by the directions into the previous pixel, into this one, out of it and out of the next
    (``((a * 9 + b) * 9 + c) * 9 + d``); and, indexed by ``32 * (9 * in + out) + mask``, how many points a mask
    keeps and (at ``5 *`` that ``+ k``) the x and y offsets of the k-th."""
    a, b, c, d = (v.ravel() for v in np.meshgrid(*[np.arange(9)] * 4, indexing="ij"))
    sx, sy = np.arange(9) % 3 - 1, np.arange(9) // 3 - 1
    before, here, after = a * 9 + b, b * 9 + c, c * 9 + d
    n_before, n_here = np.maximum(_COUNT[before], 1), _COUNT[here]
    last_x = -2 * sx[b] + _QUARTER_X[5 * before + n_before - 1]  # the previous pixel's last point
    last_y = -2 * sy[b] + _QUARTER_Y[5 * before + n_before - 1]
    next_x, next_y = 2 * sx[c] + _QUARTER_X[5 * after], 2 * sy[c] + _QUARTER_Y[5 * after]
    bits = np.zeros(len(a), dtype=np.int64)
    for j in range(5):
        x, y = _QUARTER_X[5 * here + j], _QUARTER_Y[5 * here + j]
        px = np.where(j == 0, last_x, _QUARTER_X[5 * here + max(j - 1, 0)])
        py = np.where(j == 0, last_y, _QUARTER_Y[5 * here + max(j - 1, 0)])
        end = j == n_here - 1
        fx = np.where(end, next_x, _QUARTER_X[5 * here + min(j + 1, 4)])
        fy = np.where(end, next_y, _QUARTER_Y[5 * here + min(j + 1, 4)])
        turns = ((x - px) != (fx - x)) | ((y - py) != (fy - y))
        bits |= (turns & (j < n_here)).astype(np.int64) << j
    kept = np.zeros(81 * 32, dtype=np.int64)
    kept_x = np.zeros(81 * 32 * 5, dtype=np.int64)
    kept_y = np.zeros(81 * 32 * 5, dtype=np.int64)
    for key in np.flatnonzero(_COUNT).tolist():
        for mask in range(32):
            chosen = [j for j in range(int(_COUNT[key])) if mask >> j & 1]
            slot = 32 * key + mask
            kept[slot] = len(chosen)
            for k, j in enumerate(chosen):
                kept_x[5 * slot + k], kept_y[5 * slot + k] = _QUARTER_X[5 * key + j], _QUARTER_Y[5 * key + j]
    small = np.int32  # lookups give int32 arrays: half the memory traffic of int64
    return bits.astype(small), kept.astype(small), kept_x.astype(small), kept_y.astype(small)


_TURNS, _KEPT, _KEPT_X, _KEPT_Y = _turn_tables()


def _trace(mask: np.ndarray, convention: Convention, border_columns: bool | None = None) -> _Rings | None:
    """Every ring of the mask (OpenCV's ``CHAIN_APPROX_NONE``: every boundary pixel) as integer grid points, with
    the scale and shift that take grid points to ``convention``; None for an empty mask.

    ``border_columns`` not None: if the mask looks ragged enough for :func:`_bridges` to search the grid's
    boundary pixels, their lists (:func:`_border_lists`) are made on another thread while OpenCV traces (both
    release the GIL)."""
    import cv2

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    if convention not in ("centre", "corner"):
        raise ValueError(f"convention must be 'centre' or 'corner', got {convention!r}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop: np.ndarray = np.ascontiguousarray(mask[r0:r1, c0:c1], dtype=np.uint8)
    border = None
    if border_columns is not None and _looks_ragged(crop):
        border = _pool().submit(_border_lists, crop, border_columns)
    found = _contours(crop)
    if found is None:
        return None
    px, py, starts, sizes, links = found
    owner = np.repeat(np.arange(len(sizes)), sizes)
    if convention == "centre":
        ids = np.arange(len(px))
        centre = np.array([c0, r0], np.float64)
        return _Rings(px, py, starts, sizes, links, px, py, owner, ids, starts, 1.0, centre, crop, border)
    shift = np.array([c0 + 0.25, r0 + 0.25])
    quartered = _quarter_points(px, py, starts, sizes)
    if quartered is None:  # a configuration the table lacks (none is known): trace the mask upsampled 2x
        big = cv2.resize(crop, (2 * crop.shape[1], 2 * crop.shape[0]), interpolation=cv2.INTER_NEAREST)
        x, y, starts, sizes, links = _contours(big)  # type: ignore[misc]
        owner = np.repeat(np.arange(len(sizes)), sizes)
        return _Rings(x, y, starts, sizes, links, x, y, owner, np.arange(len(x)), starts, 0.5, shift, big)
    x, y, first, sizes2 = quartered
    quarter_starts = np.cumsum(sizes2) - sizes2
    return _Rings(x, y, quarter_starts, sizes2, links, px, py, owner, first, starts, 0.5, shift, crop, border)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's threads are not there (a task given to its pool would never run)."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _pool() -> ThreadPoolExecutor:
    """The threads :func:`_trace` starts side work on (as many as cores, at most 4), made on first use (and
    again in a forked child)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="grounded-polygons")
        return _POOL


def _looks_ragged(crop: np.ndarray) -> bool:
    """Whether a mask is big and likely to have so many boundary pixels that :func:`_bridges` searches the grid
    (one in 16 pixels or more), from the changes along every 8th row (a guess: it only decides side work)."""
    height, width = crop.shape
    if height * width < 1 << 16 or width < 2:
        return False
    sample = crop[::8]
    changes = np.count_nonzero(sample[:, 1:] != sample[:, :-1]) * 8
    return changes * 2 * 64 >= height * width


def _border_lists(grid: np.ndarray, columns: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The grid's boundary pixels (those OpenCV traces: a 4-neighbour in the background) as flat indices in
    row order, and (``columns``) as flat indices of the transposed grid (column order)."""
    import cv2

    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    border = grid > cv2.erode(grid, cross, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    rows = np.flatnonzero(border)
    cols = np.flatnonzero(cv2.transpose(border.view(np.uint8)).view(bool)) if columns else None
    return rows, cols


def _contours(
    image: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """OpenCV's rings of a ``uint8`` image (``RETR_CCOMP``, ``CHAIN_APPROX_NONE``) as flat arrays: x, y,
    starts, sizes and the hierarchy; None when there is none."""
    import cv2

    contours, hierarchy = cv2.findContours(image, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return None
    sizes = np.fromiter(map(len, contours), dtype=np.int64, count=len(contours))
    points = np.concatenate(contours).reshape(-1, 2)
    return (
        np.ascontiguousarray(points[:, 0]),
        np.ascontiguousarray(points[:, 1]),
        np.cumsum(sizes) - sizes,
        sizes,
        hierarchy[0].astype(np.int64),
    )


def _following(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Each ring's values moved one back (the next point's, the first's for the last point)."""
    out = np.empty_like(values)
    out[:-1] = values[1:]
    out[ends - 1] = values[starts]
    return out


def _steps(x: np.ndarray, y: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The code 0-8 (``(dy + 1) * 3 + dx + 1``; 4: none) of each point's step to the next point of its ring."""
    return (_following(y, starts, ends) - y + 1) * 3 + (_following(x, starts, ends) - x + 1)


def _preceding(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[1:] = values[:-1]
    out[starts] = values[ends - 1]
    return out


def _quarter_points(
    px: np.ndarray, py: np.ndarray, starts: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The corner-convention rings (2x grid) of traced rings, each pixel's quarter points from
    ``_QUARTER_TABLE``: x, y, each pixel's first point and the rings' sizes; None if a pixel's directions
    are not in the table."""
    ends = starts + sizes
    out = _steps(px, py, starts, ends)
    key = _preceding(out, starts, ends) * 9 + out
    count = _COUNT[key]
    if not count.all():
        return None
    first = np.cumsum(count) - count
    slot = np.repeat(5 * key - first, count) + np.arange(int(first[-1] + count[-1]))
    x = np.repeat(2 * px, count) + _QUARTER_X[slot]
    y = np.repeat(2 * py, count) + _QUARTER_Y[slot]
    return x, y, first, np.add.reduceat(count, starts)


def _pixel_keys(
    px: np.ndarray, py: np.ndarray, starts: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each traced pixel's direction out (``_steps``) and into it."""
    ends = starts + sizes
    out = _steps(px, py, starts, ends)
    return out, _preceding(out, starts, ends)


def _quarter_turns(
    starts: np.ndarray, sizes: np.ndarray, out: np.ndarray, into: np.ndarray, key: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each traced pixel's ``_QUARTER_TABLE`` key (``9 * into + out``, if not given) and which of its quarter
    points the ring turns at (``_TURNS``), from the directions into and out of it and its neighbours."""
    ends = starts + sizes
    key = into * 9 + out if key is None else key
    return key, _TURNS[
        ((_preceding(into, starts, ends) * 9 + into) * 9 + out) * 9 + _following(out, starts, ends)
    ]


def _kept_quarters(
    px: np.ndarray,
    py: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    forced: np.ndarray,
    out: np.ndarray | None = None,
    into: np.ndarray | None = None,
    key: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The corners of the corner-convention rings of traced rings (``_QUARTER_TABLE`` points where the ring
    turns, ``_TURNS``), and each ``forced`` pixel's first quarter point: x, y (2x grid), each pixel's first
    kept point and the rings' sizes. A ring that would keep fewer than 3 points keeps all."""
    if out is None or into is None:
        out, into = _pixel_keys(px, py, starts, sizes)
    key, bits = _quarter_turns(starts, sizes, out, into, key)
    bits[forced] |= 1
    slot = 32 * key + bits
    count = _KEPT[slot]
    few = np.add.reduceat(count, starts) < 3
    if few.any():
        full = np.repeat(few, sizes)
        slot[full] = 32 * key[full] + 31
        count = _KEPT[slot]
    first = np.cumsum(count) - count
    pixel = np.repeat(np.arange(len(count)), count)  # each kept point's pixel (one repeat: the slow step)
    pick = 5 * slot[pixel] + (np.arange(len(pixel)) - first[pixel])
    x = 2 * px[pixel] + _KEPT_X[pick]
    y = 2 * py[pixel] + _KEPT_Y[pick]
    return x, y, first, np.add.reduceat(count, starts)


# ---------------------------------------------------------------------- simplification
def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Drop the vertices where a closed polygon goes straight on (or Douglas-Peucker with ``tolerance``)."""
    if tolerance > 0 and len(points) > 3:
        import cv2

        return (
            cv2.approxPolyDP(points.reshape(-1, 1, 2).astype(np.int32), tolerance, True)
            .reshape(-1, 2)
            .astype(np.float64)
        )
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:
        return points
    step_in = points - np.concatenate([points[-1:], points[:-1]])
    step_out = np.concatenate([points[1:], points[:1]]) - points
    cross = step_in[:, 0] * step_out[:, 1] - step_in[:, 1] * step_out[:, 0]
    dot = (step_in * step_out).sum(axis=1)
    keep = (cross != 0) | (dot <= 0)
    return points[keep] if keep.sum() >= 3 else points


def _turning(
    x: np.ndarray,
    y: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    forced: np.ndarray,
    out: np.ndarray | None = None,
    into: np.ndarray | None = None,
) -> np.ndarray:
    """The points of rings of unit steps (8-neighbours) to keep, in order: where the ring turns or goes back,
    the ``forced`` ones, and every point of a ring that would keep fewer than 3 (``out``, ``into``: the
    steps' codes, :func:`_pixel_keys`, if known)."""
    if out is None or into is None:
        out, into = _pixel_keys(x, y, starts, sizes)
    keep = out != into
    keep[forced] = True
    chosen = np.flatnonzero(keep)
    few = np.diff(np.searchsorted(chosen, np.append(starts, len(keep)))) < 3
    if few.any():
        keep |= np.repeat(few, sizes)
        chosen = np.flatnonzero(keep)
    return chosen


# ---------------------------------------------------------------------- joining rings
def _one_ring_each(rings: _Rings, roots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Point indices and lengths of the polygons when each group is one ring (its root)."""
    lengths = rings.sizes[roots]
    index = np.repeat(rings.starts[roots] - (np.cumsum(lengths) - lengths), lengths) + np.arange(
        lengths.sum()
    )
    return index, lengths


def _bridge_tree(
    rings: _Rings, group: np.ndarray, roots: np.ndarray, columns: bool = True, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bridges of each group's spanning tree (:func:`_spanning_tree`), from the candidates of
    :func:`_bridges` between rings of one group (``columns=False``: along rows only and fewer bridges of
    length 0, enough where a bridge's length costs nothing, the corner convention: ``pycocotools`` fills
    zero-width bridges exactly wherever they run)."""
    a, b, ia, ib, length = _bridges(
        rings.px, rings.py, rings.pixel_ring, rings.pixel_starts, rings.grid, columns, out, rings.border
    )
    same = group[a] == group[b]
    ia, ib = rings.pixel_point[ia[same]], rings.pixel_point[ib[same]]
    return _spanning_tree(rings, group, roots, a[same], b[same], ia, ib, length[same])


def _bridges(
    px: np.ndarray,
    py: np.ndarray,
    owner: np.ndarray,
    starts: np.ndarray,
    grid: np.ndarray | None,
    columns: bool = True,
    out: np.ndarray | None = None,
    border: Future[tuple[np.ndarray, np.ndarray | None]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate bridges: from each ring's leftmost, rightmost, topmost and bottommost pixel to the next
    boundary pixel along its row or column (it belongs to another ring, and the bridge crosses no ring), and
    of length 0 to another ring through that same pixel. Returns ring ids, pixel indices and weights: the
    pixels of background a bridge crosses (where ``grid``, the image the pixels are in, says; ``cv2.fillPoly``
    draws them), then its length. ``border``: the grid's :func:`_border_lists`, if already started."""
    if grid is None:
        x = px.astype(np.int64) - int(px.min())
        y = py.astype(np.int64) - int(py.min())
        width, height = int(x.max()) + 1, int(y.max()) + 1
    else:
        x, y = px.astype(np.int64), py.astype(np.int64)
        height, width = grid.shape
    count = len(x)
    along_rows = y * width + x
    along_cols = x * height + y

    # each ring's extreme pixels are among those where it turns (or it is one pixel): only those are compared
    ends = starts + np.diff(np.append(starts, count))
    codes = _steps(x, y, starts, ends) if out is None else out
    turn = (codes != _preceding(codes, starts, ends)) | (codes == 4)
    turn[starts] = True  # every ring keeps one
    corners = np.flatnonzero(turn)
    first = np.cumsum(np.add.reduceat(turn.astype(np.int64), starts))
    first = np.concatenate([[0], first[:-1]])
    cx, cy = x[corners], y[corners]

    def extreme(key: np.ndarray) -> np.ndarray:  # each ring's pixel of the least key
        return np.minimum.reduceat(key * count + corners, first) % count

    scans = [
        (extreme(cx * height + cy), -1, 0),
        (extreme((width - 1 - cx) * height + cy), 1, 0),
    ]  # left, right
    if columns:  # topmost upwards, bottommost downwards
        scans += [(extreme(cy * width + cx), -1, 1), (extreme((height - 1 - cy) * width + cx), 1, 1)]
    queries = np.concatenate([q for q, _, _ in scans])
    at_rows, at_cols = along_rows[queries], along_cols[queries]
    empty: np.ndarray = np.zeros(0, dtype=np.int64)
    cols, low_c, high_c = empty, empty, empty
    row_pixel: np.ndarray | None = None  # the pixel at each place of rows / cols (None: read from painted)
    col_pixel: np.ndarray | None = None
    # few pixels: sorted (several rings through a pixel: several); many: painted
    if grid is None or count * (16 if border is None else 64) < width * height:
        row_pixel = np.argsort(along_rows, kind="stable")
        rows = along_rows[row_pixel]
        low_r, high_r = np.searchsorted(rows, at_rows, "left"), np.searchsorted(rows, at_rows, "right")
        if columns:
            col_pixel = np.argsort(along_cols, kind="stable")
            cols = along_cols[col_pixel]
            low_c, high_c = np.searchsorted(cols, at_cols, "left"), np.searchsorted(cols, at_cols, "right")
        through = [row_pixel[low_r], row_pixel[high_r - 1]]
    else:  # many: the grid's boundary pixels (those OpenCV traces: a 4-neighbour in the background), in order
        lists = border.result() if border is not None else None
        if lists is None or (columns and lists[1] is None):
            lists = _border_lists(grid, columns)
        rows, col_list = lists
        half = 2 * len(starts)  # the queries along rows, then those along columns
        low_r = np.zeros(len(queries), dtype=np.int64)
        low_r[:half] = _search(rows, at_rows[:half])
        high_r = low_r + 1
        if columns:
            assert col_list is not None
            cols = col_list
            low_c = np.zeros(len(queries), dtype=np.int64)
            low_c[half:] = _search(cols, at_cols[half:])
            high_c = low_c + 1
        painted = np.zeros(width * height, dtype=np.int32)  # 1 + the last pixel there
        tags = np.arange(1, count + 1, dtype=np.int32)
        painted[along_rows] = tags
        through = [painted[at_rows].astype(np.int64) - 1]
        if columns:  # where lengths count: the first ring through a query pixel too (a free bridge)
            again = np.flatnonzero(painted[along_rows] != tags)  # pixels a later one is painted over
            if len(again):
                shared = along_rows[again]
                last = painted[shared]
                painted[shared[::-1]] = tags[again[::-1]]  # the first there, where there are several
                through.insert(0, painted[at_rows].astype(np.int64) - 1)
                painted[shared] = last
            else:
                through.insert(0, through[0])
    src, dst, weights = [], [], []
    for other in through:  # another ring through the query pixel: a bridge of length 0
        shared = owner[other] != owner[queries]
        src.append(queries[shared])
        dst.append(other[shared])
        weights.append(np.zeros(int(shared.sum()), dtype=np.int64))
    span = width + height + 2
    n = len(starts)
    for k, (_, step, axis) in enumerate(scans):
        ordered, low, high, at, line = (
            (rows, low_r, high_r, at_rows, width) if axis == 0 else (cols, low_c, high_c, at_cols, height)
        )
        part = slice(k * n, (k + 1) * n)
        pos = low[part] - 1 if step < 0 else high[part]
        ok = (pos >= 0) & (pos < len(ordered))
        pos, here, query = pos[ok], at[part][ok], queries[part][ok]
        hit = ordered[pos]
        ok = hit // line == here // line
        hit, here, query, pos = hit[ok], here[ok], query[ok], pos[ok]
        if axis == 0:
            other = row_pixel[pos] if row_pixel is not None else painted[hit].astype(np.int64) - 1
        elif col_pixel is not None:
            other = col_pixel[pos]
        else:
            other = painted[(hit % height) * width + hit // height].astype(np.int64) - 1
        length = np.abs(hit - here)
        weight = length
        if grid is not None:  # the pixel next to the query along the bridge (all between are alike)
            nx, ny = (x[query] + step, y[query]) if axis == 0 else (x[query], y[query] + step)
            inside = grid[np.clip(ny, 0, height - 1), np.clip(nx, 0, width - 1)] != 0
            weight = np.where((length > 1) & ~inside, length - 1, 0) * span + length
        src.append(query)
        dst.append(other)
        weights.append(weight)
    ia, ib = np.concatenate(src), np.concatenate(dst)
    return owner[ia], owner[ib], ia, ib, np.concatenate(weights)


def _search(ordered: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.searchsorted(ordered, values)``, the values looked up in order (faster: the reads follow each other)."""
    order = np.argsort(values)
    out = np.empty_like(order)
    out[order] = np.searchsorted(ordered, values[order])
    return out


def _spanning_tree(
    rings: _Rings,
    group: np.ndarray,
    roots: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    length: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The minimum spanning forest of the rings over the bridges, one tree a group; a set of rings no bridge
    reaches is joined from its first ring's first point to the nearest first point of its root's tree.
    Returns the tree's bridges: ring ids ``lo < hi`` and their point indices, sorted by ``(lo, hi)``."""
    from scipy.sparse import coo_matrix, csr_matrix
    from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

    n = len(rings.sizes)
    flip = a > b
    lo, hi = np.where(flip, b, a), np.where(flip, a, b)
    ilo, ihi = np.where(flip, ib, ia), np.where(flip, ia, ib)
    pair = lo * n + hi
    top = int(length.max()) + 1 if len(length) else 1
    # one key (the pair, then the weight) where it fits in 64 bits
    order = np.argsort(pair * top + length) if n * n * top < 2**62 else np.lexsort((length, pair))
    pair, length = pair[order], length[order]
    best = np.ones(len(pair), dtype=bool)
    best[1:] = pair[1:] != pair[:-1]  # the shortest bridge of each pair of rings
    pair, length = pair[best], length[best]
    ilo, ihi = ilo[order][best], ihi[order][best]
    weights = length.astype(np.float64) + 0.5  # > 0: a zero entry would be no edge
    # pair is sorted and unique: the matrix is built in CSR form directly (no COO sort and sum)
    indptr = np.searchsorted(pair, np.arange(n + 1) * n)
    tree = minimum_spanning_tree(csr_matrix((weights, pair % n, indptr), shape=(n, n))).tocoo()
    chosen = np.searchsorted(pair, np.minimum(tree.row, tree.col) * n + np.maximum(tree.row, tree.col))
    lo, hi, ilo, ihi = pair[chosen] // n, pair[chosen] % n, ilo[chosen], ihi[chosen]
    # a forest of n - len(roots) edges within the groups has one tree a group; else some are apart
    count, label = len(roots), None
    if len(lo) < n - len(roots):
        count, label = connected_components(
            coo_matrix((np.ones(len(lo)), (lo, hi)), shape=(n, n)), directed=False
        )
    if count > len(roots):
        assert label is not None  # sets of rings no bridge reaches: joined by their first points
        from scipy.spatial import cKDTree

        anchors = np.stack([rings.x[rings.starts], rings.y[rings.starts]], axis=1).astype(np.float64)
        reps = np.unique(label, return_index=True)[1]  # each set's first ring
        stray = reps[~np.isin(label[reps], label[roots])]
        extra = []
        for g in np.unique(group[stray]).tolist():
            main = np.flatnonzero((label == label[roots[g]]) & (group == g))
            mine = stray[group[stray] == g]
            nearest = main[cKDTree(anchors[main]).query(anchors[mine])[1]]
            extra.append(np.stack([np.minimum(mine, nearest), np.maximum(mine, nearest)], axis=1))
        more = np.concatenate(extra)
        lo, hi = np.concatenate([lo, more[:, 0]]), np.concatenate([hi, more[:, 1]])
        ilo = np.concatenate([ilo, rings.starts[more[:, 0]]])
        ihi = np.concatenate([ihi, rings.starts[more[:, 1]]])
    order = np.argsort(lo * n + hi)
    return lo[order], hi[order], ilo[order], ihi[order]


def _walk(
    rings: _Rings,
    group: np.ndarray,
    roots: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    ilo: np.ndarray,
    ihi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The depth-first walk of each group's tree of bridges as point indices (see :func:`join_rings`).

    Each ring is walked from its entry point in pieces: up to its first child's bridge point, then after each
    child up to the next one, and after the last one round to the entry point again. Each piece follows one
    step of the tree's Euler tour (down to a ring: its first piece; back up from a child: the parent's next
    piece); the steps are put in order by ranking the tour's successor list (pointer jumping).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order

    starts, sizes = rings.starts, rings.sizes
    n, n_groups = len(sizes), len(roots)
    virtual = n  # joined to every root: one search orients every tree
    rows = np.concatenate([lo, np.full(n_groups, virtual)])  # sorted (lo is, the virtual node is last)
    cols = np.concatenate([hi, roots])
    indptr = np.searchsorted(rows, np.arange(n + 2))
    graph = csr_matrix((np.ones(len(rows)), cols, indptr), shape=(n + 1, n + 1))
    _, parent = breadth_first_order(graph, virtual, directed=False, return_predecessors=True)
    parent = parent[:n].astype(np.int64)
    child = np.flatnonzero(parent != virtual)
    up = parent[child]
    edge = np.searchsorted(lo * n + hi, np.minimum(up, child) * n + np.maximum(up, child))
    child_low = child < up
    at_child = np.where(child_low, ilo[edge], ihi[edge])
    at_parent = np.where(child_low, ihi[edge], ilo[edge])
    entry = np.zeros(n, dtype=np.int64)
    entry[child] = at_child - starts[child]
    # where each child leaves its parent's ring, counted from the parent's entry point
    offset = (at_parent - starts[up] - entry[up]) % sizes[up]
    order = np.lexsort((offset, up))
    kids, kid_parent, kid_offset = child[order], up[order], offset[order]
    n_kids = len(kids)
    n_children = np.bincount(kid_parent, minlength=n)
    first_kid = np.cumsum(n_children) - n_children
    position = np.full(n, -1, dtype=np.int64)
    position[kids] = np.arange(n_kids)
    # the offset a ring's first piece ends at: its first child's, else all round (m) / its last point (roots)
    first_end = sizes.copy()
    has = n_children > 0
    first_end[has] = kid_offset[first_kid[has]]
    t = np.arange(n_kids)
    has_next = t + 1 < first_kid[kid_parent] + n_children[kid_parent]
    next_end = np.where(has_next, kid_offset[np.minimum(t + 1, max(n_kids - 1, 0))], sizes[kid_parent])
    # the Euler tour: step t goes down to kids[t], step n_kids + t back up from it; 2 * n_kids: the end
    end = 2 * n_kids
    successor = np.empty(end + 1, dtype=np.int64)
    successor[:n_kids] = np.where(has[kids], first_kid[kids], n_kids + t)
    back_to = np.where(parent[kid_parent] == virtual, end, n_kids + position[kid_parent])
    successor[n_kids:end] = np.where(has_next, t + 1, back_to)
    successor[end] = end
    remaining: np.ndarray = np.ones(end + 1, dtype=np.int64)  # steps from each to the end of its tour
    remaining[end] = 0
    follow: np.ndarray = successor
    while (follow[:end] != end).any():
        remaining = remaining + remaining[follow]
        follow = follow[follow]
    # pieces: each root's first piece, then one after each step of the tour, in tour order
    root_end = np.where(has[roots], first_end[roots], sizes[roots] - 1)
    piece_ring = np.concatenate([roots, kids, kid_parent])
    piece_lo = np.concatenate(
        [np.zeros(n_groups, dtype=np.int64), np.zeros(n_kids, dtype=np.int64), kid_offset]
    )
    piece_hi = np.concatenate([root_end, first_end[kids], next_end])
    piece_group = np.concatenate([np.arange(n_groups), group[kids], group[kids]])
    piece_rank = np.concatenate([np.full(n_groups, -end - 1), -remaining[:end]])
    order = np.lexsort((piece_rank, piece_group))
    ring, low, lengths = piece_ring[order], piece_lo[order], piece_hi[order] - piece_lo[order] + 1
    before = np.cumsum(lengths) - lengths
    reach = np.repeat(entry[ring] + low - before, lengths) + np.arange(int(lengths.sum()))
    size = np.repeat(sizes[ring], lengths)
    index = np.repeat(starts[ring], lengths) + reach - size * (reach >= size)
    polygon_lengths = np.bincount(piece_group[order], weights=lengths, minlength=n_groups).astype(np.int64)
    return index, polygon_lengths
