"""Device and numeric-precision choices shared by the model adapters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

__all__ = ["PRECISIONS", "Precision", "autocast", "pick_device"]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first CUDA device if there is one, else the CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for the block (scoped, never process-wide): bf16/fp16 autocast, or plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        yield
        return
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is for GPUs; use bf16 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
