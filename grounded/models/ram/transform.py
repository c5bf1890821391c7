"""Image → model input, as the original's ``get_transform``: RGB, resize to a square (bilinear, aspect ratio not
kept), scale to [0, 1], ImageNet mean / std."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "preprocess", "resize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: PIL's bilinear (antialiased) resize, what torchvision's ``Resize`` does to a
    PIL image."""
    image = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def preprocess(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """``(N, 3, size, size)`` float32 normalised batch from ``(H, W, 3)`` uint8 RGB arrays."""
    batch = np.stack([resize(p, size) for p in images]).astype(np.float32) / 255.0
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((tensor - mean) / std).contiguous()
