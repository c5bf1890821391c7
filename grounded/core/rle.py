"""COCO run-length encoding of binary masks (via ``pycocotools``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = [
    "annotation_rle",
    "decode_rle",
    "encode_masks",
    "encode_window",
    "rle_area",
    "rle_to_json",
    "union_rles",
]

# runs beyond which encode_window hands the whole mask to pycocotools' C encoder instead of a Python list
_MAX_LISTED_RUNS = 20000


def encode_masks(masks: torch.Tensor | np.ndarray) -> list[dict[str, Any]]:
    """Encode ``(N, H, W)`` boolean masks as COCO compressed RLE dicts (``counts`` as ``str``).

    Each mask is cut to the rows and columns it occupies and encoded by :func:`encode_window` (the same
    bytes as ``pycocotools.mask.encode`` of the whole mask, without its column-major copy of the image)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().to("cpu", torch.bool).numpy()
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape (N, H, W), got {masks.shape}")
    size = (int(masks.shape[1]), int(masks.shape[2]))
    out = []
    for mask in masks:
        mask = mask.astype(bool, copy=False)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            out.append(encode_window(mask[:0, :0], 0, 0, size))
            continue
        window = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        out.append(encode_window(window, int(rows[0]), int(cols[0]), size))
    return out


def encode_window(window: np.ndarray, top: int, left: int, size: tuple[int, int]) -> dict[str, Any]:
    """COCO compressed RLE of a ``size`` mask that is ``window`` (bool) at ``(top, left)`` and 0 elsewhere.

    The runs are read off the window alone (column-major, as COCO counts them) and compressed by
    ``pycocotools`` (``frPyObjects`` of the uncompressed counts): the same bytes as ``mask_utils.encode``."""
    height, width = size
    rows, cols = window.shape
    if top < 0 or left < 0 or top + rows > height or left + cols > width:
        raise ValueError(f"window {window.shape} at ({top}, {left}) is outside a {size} mask")
    total = height * width
    if 4 * rows * cols > total:  # a window over much of the image: pycocotools' C encoder is cheaper
        return _encode_whole(window, top, left, size)
    if rows and cols:
        padded = np.zeros((cols, rows + 2), dtype=np.int8)  # each window column, a 0 above and below
        padded[:, 1:-1] = window.T
        column, position = np.nonzero(np.diff(padded, axis=1))  # run starts and ends, in column-major order
        edges = (left + column).astype(np.int64) * height + top + position
        touching = np.flatnonzero(edges[1:] == edges[:-1])  # a run that goes on into the next column
        if len(touching):
            edges = np.delete(edges, np.concatenate([touching, touching + 1]))
    else:
        edges = np.zeros(0, dtype=np.int64)
    if len(edges) > _MAX_LISTED_RUNS:  # many runs (a ragged mask): pycocotools' C encoder on the whole mask
        return _encode_whole(window, top, left, size)
    counts = np.diff(np.concatenate([[0], edges, [total]]))
    if len(edges) and edges[-1] == total:  # the last run ends the image: no trailing zeros
        counts = counts[:-1]
    rle = mask_utils.frPyObjects({"counts": counts.tolist(), "size": [height, width]}, height, width)
    return rle_to_json(rle)


def _encode_whole(window: np.ndarray, top: int, left: int, size: tuple[int, int]) -> dict[str, Any]:
    """pycocotools' C encoder on the whole mask, laid out column-major by OpenCV's blocked transpose (a
    strided NumPy copy into Fortran order is several times slower)."""
    import cv2

    height, width = size
    columns = np.zeros((width, height), dtype=np.uint8)  # row x: image column x, the Fortran layout
    if window.size:
        part = cv2.transpose(np.ascontiguousarray(window).view(np.uint8))
        columns[left : left + window.shape[1], top : top + window.shape[0]] = part
    return rle_to_json(mask_utils.encode(columns.T[:, :, None])[0])


def rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    """Make a pycocotools RLE JSON-serialisable (``counts`` bytes → ``str``)."""
    counts = rle["counts"]
    return {
        "size": [int(s) for s in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def union_rles(rles: list[dict[str, Any]], height: int, width: int) -> dict[str, Any]:
    """pycocotools' ``merge`` (union) of RLEs of one size, taken 16 at a time in a tree: the same RLE as one
    ``merge`` of them all, which adds each to the growing union in turn and so grows with the square of
    their number (5 s for a ragged mask's 12,677 polygons, 47 ms this way)."""
    if not rles:
        return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    while len(rles) > 1:
        rles = [
            mask_utils.merge(rles[i : i + 16]) if i + 1 < len(rles) else rles[i]
            for i in range(0, len(rles), 16)
        ]
    return rles[0]


def annotation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """The compressed RLE of a COCO annotation's ``segmentation`` as ``pycocotools``' ``COCO.annToRLE`` makes
    it (polygons: each rasterised by ``frPyObjects``, their union; uncompressed RLE: encoded; compressed RLE:
    itself, ``counts`` as bytes), the union taken by :func:`union_rles`; an empty list: an empty mask."""
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width) if segmentation else []
        return union_rles(rles, height, width)
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {
        "size": list(segmentation["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode one COCO RLE (compressed or uncompressed) to a boolean ``(H, W)`` mask (C order).

    pycocotools decodes column-major (Fortran order); the mask is laid out row-major by OpenCV's blocked
    transpose, since every reader (NumPy arithmetic, Pillow, torch) would otherwise copy it strided, several
    times slower on a large image."""
    import cv2

    columns = mask_utils.decode(annotation_rle(rle, *rle["size"])).T  # (W, H): the Fortran layout of (H, W)
    if columns.shape[0] == 0 or columns.shape[1] == 0:
        return np.zeros(columns.shape[::-1], dtype=bool)
    return cv2.transpose(np.ascontiguousarray(columns)).view(bool)


def rle_area(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of an RLE."""
    return int(mask_utils.area(annotation_rle(rle, *rle["size"])))
