"""COCO run-length encoding of binary masks (via ``pycocotools``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = ["decode_rle", "encode_masks", "rle_area", "rle_to_json"]


def encode_masks(masks: torch.Tensor | np.ndarray) -> list[dict[str, Any]]:
    """Encode ``(N, H, W)`` boolean masks as COCO compressed RLE dicts (``counts`` as ``str``)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().to("cpu", torch.bool).numpy()
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape (N, H, W), got {masks.shape}")
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    return [rle_to_json(rle) for rle in mask_utils.encode(fortran)]


def rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    """Make a pycocotools RLE JSON-serialisable (``counts`` bytes → ``str``)."""
    counts = rle["counts"]
    return {
        "size": [int(s) for s in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode one COCO RLE (compressed or uncompressed) to a boolean ``(H, W)`` mask."""
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(rle["counts"], str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def rle_area(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of a compressed RLE."""
    counts = rle["counts"]
    return int(
        mask_utils.area(
            {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        )
    )
