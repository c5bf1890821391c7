"""Masks to polygons with OpenCV's contour tracer (``cv2.findContours``), in the two conventions readers use.

**Centre convention** (YOLO segmentation; the readers are ultralytics' ``polygon2mask`` and supervision, which
fill with ``cv2.fillPoly``): vertex ``(x, y)`` is the centre of pixel row ``y``, column ``x``. The traced ring
runs through the mask's boundary pixels, so ``cv2.fillPoly`` (which fills the boundary too) gives the mask
back exactly.

**Corner convention** (COCO; the reader is ``pycocotools``, which datumaro, torchvision and detectron2 call):
pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)`` and a pixel is inside when its centre is. Rings are traced on
the mask upsampled 2x, so they run a quarter pixel inside the outline of the pixel squares: ``pycocotools``
gives the mask back exactly.

A mask of several parts, or with holes, is a list of :class:`Part` (outer ring, hole rings), from OpenCV's
two-level hierarchy (``RETR_CCOMP``: a part inside a hole is a part again). :func:`join_rings` walks several
rings as one polygon with zero-width bridges (out and back) between nearest vertices, as ultralytics'
``merge_multi_segment`` does; under the even-odd fill of ``cv2.fillPoly`` and ``pycocotools`` a hole joined to
its outer ring stays open. A bridge across the background is drawn by ``cv2.fillPoly`` as a 1-pixel line, the
one loss of a joined polygon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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


def mask_parts(mask: np.ndarray, convention: Convention = "centre", tolerance: float = 0.0) -> list[Part]:
    """The parts of a boolean ``(H, W)`` mask, each with its outer ring and holes, in ``convention``.

    ``tolerance`` > 0 simplifies each ring (Douglas-Peucker, ``cv2.approxPolyDP``, in pixels); else only
    vertices where the boundary turns are kept.
    """
    grid, scale, shift = _trace(mask, convention)
    parts = []
    for outer, holes in grid:
        rings = [_simplify(r, tolerance / scale) * scale + shift for r in (outer, *holes)]
        parts.append(Part(rings[0], tuple(rings[1:])))
    return parts


def mask_polygons(
    mask: np.ndarray, convention: Convention = "centre", join: Literal["holes", "all"] = "holes"
) -> list[np.ndarray]:
    """Polygons of a mask for writers, as ``(N, 2)`` arrays: ``join="holes"``: one polygon per part, the part's
    holes joined to its outer ring (COCO: a list of polygons is filled as their union); ``"all"``: one polygon
    of every ring (YOLO: one line per instance)."""
    grid, scale, shift = _trace(mask, convention)
    groups = [[o, *h] for o, h in grid] if join == "holes" else [[r for o, h in grid for r in (o, *h)]]
    return [_simplify(join_rings(rings), 0.0) * scale + shift for rings in groups if rings]


def _trace(
    mask: np.ndarray, convention: Convention
) -> tuple[list[tuple[np.ndarray, list[np.ndarray]]], float, np.ndarray]:
    """Every part's outer ring and holes as integer ``(N, 2)`` grid points (every boundary pixel: OpenCV's
    ``CHAIN_APPROX_NONE``), with the scale and shift that take grid points to ``convention``."""
    import cv2

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    if convention not in ("centre", "corner"):
        raise ValueError(f"convention must be 'centre' or 'corner', got {convention!r}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return [], 1.0, np.zeros(2)
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop: np.ndarray = np.ascontiguousarray(mask[r0:r1, c0:c1], dtype=np.uint8)
    if convention == "corner":
        crop = cv2.resize(crop, (2 * crop.shape[1], 2 * crop.shape[0]), interpolation=cv2.INTER_NEAREST)
        scale, shift = 0.5, np.array([c0 + 0.25, r0 + 0.25])
    else:
        scale, shift = 1.0, np.array([c0, r0], dtype=np.float64)
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return [], scale, shift
    links = hierarchy[0]
    parts = []
    for i in range(len(contours)):
        if links[i][3] != -1:  # a hole: read with its outer ring
            continue
        holes = []
        child = int(links[i][2])
        while child != -1:
            holes.append(contours[child].reshape(-1, 2))
            child = int(links[child][0])
        parts.append((contours[i].reshape(-1, 2), holes))
    return parts, scale, shift


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


def join_rings(rings: list[np.ndarray]) -> np.ndarray:
    """Several rings of integer grid points as one ``(N, 2)`` polygon, walked as a tree of bridges.

    A bridge joins two points of different rings that follow each other in a row (or a column) of the grid,
    so it crosses no other ring; the minimum spanning tree of the rings over the shortest bridge of each pair
    (rings no bridge reaches are joined from their first point) is walked depth-first: each ring is entered
    at its bridge point and walked all round, leaving for each child ring at that child's bridge point and
    coming back, so every bridge is walked out and back (zero width) and every ring once.
    """
    if not rings:
        return np.zeros((0, 2))
    if len(rings) == 1:
        return np.asarray(rings[0])
    entry, exits = _spanning_tree(rings, *_bridges(rings))
    pieces: list[np.ndarray] = []
    # frames: [ring, entry point, its exits sorted by offset from the entry, next exit, offset reached]
    stack: list[list[Any]] = [[0, 0, sorted(exits[0]), 0, 0]]
    while stack:
        frame = stack[-1]
        ring, start, out, j, done = frame
        points = rings[ring]
        m = len(points)
        if j < len(out):
            offset, child = out[j]
            pieces.append(points[(start + np.arange(done, offset + 1)) % m])
            frame[3], frame[4] = j + 1, offset
            child_start = entry[child]
            size = len(rings[child])
            child_out = sorted(((e - child_start) % size, c) for e, c in exits[child])
            stack.append([child, child_start, child_out, 0, 0])
        else:
            pieces.append(points[(start + np.arange(done, m + 1)) % m])  # round to the entry point again
            stack.pop()
    return np.concatenate(pieces)


def _bridges(rings: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shortest bridge of each pair of rings found along rows and columns: ring ids ``a < b``, point
    indices and lengths."""
    points = np.concatenate(rings).astype(np.int64)
    sizes = np.array([len(r) for r in rings])
    owner = np.repeat(np.arange(len(rings)), sizes)
    local = np.arange(len(points)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    x, y = points[:, 0] - points[:, 0].min(), points[:, 1] - points[:, 1].min()
    found = []
    for line, pos in ((y, x), (x, y)):  # along rows, then along columns
        order = np.argsort(line * (int(pos.max()) + 1) + pos, kind="stable")  # each line's points in turn
        first, second = order[:-1], order[1:]
        keep = (line[first] == line[second]) & (owner[first] != owner[second])  # equal points: length 0
        found.append((first[keep], second[keep], (pos[second] - pos[first])[keep]))
    src = np.concatenate([f[0] for f in found])
    dst = np.concatenate([f[1] for f in found])
    length = np.concatenate([f[2] for f in found])
    flip = owner[src] > owner[dst]
    src[flip], dst[flip] = dst[flip], src[flip]
    pair = owner[src] * len(rings) + owner[dst]
    order = np.lexsort((length, pair))
    src, dst, length, pair = src[order], dst[order], length[order], pair[order]
    first_of_pair = np.ones(len(pair), bool)
    first_of_pair[1:] = pair[1:] != pair[:-1]
    src, dst, length = src[first_of_pair], dst[first_of_pair], length[first_of_pair]
    return owner[src], owner[dst], local[src], local[dst], length


def _spanning_tree(
    rings: list[np.ndarray], a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray, length: np.ndarray
) -> tuple[list[int], list[list[tuple[int, int]]]]:
    """The minimum spanning tree of the rings over the bridges; a group of rings no bridge reaches is joined
    from its first ring's first point to the nearest first point of the group of ring 0. Returns each ring's
    entry point and its ``(exit point, child)`` list, rooted at ring 0."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

    n = len(rings)
    a_ids, b_ids = a, b
    weights = np.asarray(length, dtype=np.float64) + 0.5  # > 0: a zero entry would be no edge
    tree = minimum_spanning_tree(coo_matrix((weights, (a, b)), shape=(n, n))).tocoo()
    lo, hi = np.minimum(tree.row, tree.col).astype(np.int64), np.maximum(tree.row, tree.col).astype(np.int64)
    found = np.searchsorted(
        np.asarray(a_ids, np.int64) * n + b_ids, lo * n + hi
    )  # the bridges, sorted by pair
    links = list(zip(lo.tolist(), hi.tolist(), ia[found].tolist(), ib[found].tolist(), strict=True))
    graph = coo_matrix((np.ones(len(links)), ([k[0] for k in links], [k[1] for k in links])), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    if count > 1:  # join each other group's first ring to the nearest ring of ring 0's group, first points
        from scipy.spatial import cKDTree

        anchors = np.stack([r[0] for r in rings]).astype(np.float64)
        main = np.flatnonzero(label == label[0])
        firsts = np.unique(label, return_index=True)[1]
        firsts = firsts[label[firsts] != label[0]]
        nearest = main[cKDTree(anchors[main]).query(anchors[firsts])[1]]
        links.extend((int(v), int(u), 0, 0) for u, v in zip(firsts, nearest, strict=True))
    adjacent: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]  # (other ring, my point, its point)
    for u, v, iu, iv in links:
        adjacent[u].append((v, iu, iv))
        adjacent[v].append((u, iv, iu))
    entry = [0] * n
    exits: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    seen = [False] * n
    seen[0] = True
    todo = [0]
    while todo:
        u = todo.pop()
        for v, iu, iv in adjacent[u]:
            if not seen[v]:
                seen[v] = True
                entry[v] = iv
                exits[u].append((iu, v))
                todo.append(v)
    return entry, exits
