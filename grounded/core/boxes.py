"""Box coordinate conversions (thin wrappers over ``torchvision.ops``) and pixel scaling."""

from __future__ import annotations

import torch
from torchvision.ops import box_convert

__all__ = ["clip_xyxy", "cxcywh_to_xyxy", "normalized_to_pixels", "xywh_to_xyxy", "xyxy_to_xywh"]


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """Corner boxes ``(x0, y0, x1, y1)`` to COCO boxes ``(x, y, width, height)``."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="xywh")


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """COCO boxes ``(x, y, width, height)`` to corner boxes ``(x0, y0, x1, y1)``."""
    return box_convert(boxes, in_fmt="xywh", out_fmt="xyxy")


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Centre boxes ``(cx, cy, w, h)`` (DETR-style) to corner boxes."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def normalized_to_pixels(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Scale boxes with coordinates in ``[0, 1]`` to pixels of an image of ``(height, width)``."""
    height, width = image_size
    scale = boxes.new_tensor([width, height, width, height])
    return boxes * scale


def clip_xyxy(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Clip corner boxes to the image ``(height, width)``."""
    height, width = image_size
    out = boxes.clone()
    out[..., 0::2] = out[..., 0::2].clamp(0, width)
    out[..., 1::2] = out[..., 1::2].clamp(0, height)
    return out
