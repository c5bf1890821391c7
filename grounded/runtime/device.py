"""Device and numeric-precision choices shared by the model adapters."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from grounded.runtime.denormals import flush_denormals
from grounded.runtime.memory import reuse_freed_memory

__all__ = [
    "PRECISIONS",
    "DeviceError",
    "Precision",
    "autocast",
    "check_precision",
    "cpu_has_native_bf16",
    "pick_device",
    "resolve_precision",
    "usable_devices",
]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


class DeviceError(ValueError):
    """A device or precision this machine cannot run."""


def check_precision(precision: str) -> str:
    """Validate a precision name early (when an adapter is built, not at its first forward pass)."""
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16).

    Without it PyTorch emulates bf16 matmuls, several times slower than fp32 (measured 8x on an AVX2 EPYC).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: ask oneDNN (true on AVX512 CPUs, which convert bf16 fast enough)
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` → bf16 where the hardware computes it natively (CUDA with bf16, CPU with AMX/AVX512-BF16),
    fp32 elsewhere; other names are returned unchanged."""
    check_precision(precision)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def usable_devices() -> list[str]:
    """The devices this PyTorch build can run on this machine: ``cpu``, then ``cuda:N``, ``mps``, ``xpu:N``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return found


def _is_usable(device: torch.device, usable: list[str]) -> bool:
    if device.index is None:
        return any(name.partition(":")[0] == device.type for name in usable)
    single = device.type in ("cpu", "mps") and device.index == 0  # cpu:0 and mps:0 are the one device
    return f"{device.type}:{device.index}" in usable or (single and device.type in usable)


def pick_device(device: str | torch.device = "auto", precision: str = "fp32") -> torch.device:
    """``"auto"`` → the first CUDA device if there is one, else the CPU; any other device must be one of
    :func:`usable_devices` (else :class:`DeviceError`, one line listing them)."""
    if str(device) == "auto":
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        usable = usable_devices()
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise DeviceError(
                f"invalid device {device!r}; this machine has: auto, {', '.join(usable)}"
            ) from None
        if not _is_usable(chosen, usable):
            raise DeviceError(
                f"device {device!r} is not available here (this PyTorch build and machine have: "
                f"{', '.join(usable)}); use --device auto or one of those"
            )
    if precision == "fp16" and chosen.type == "cpu":
        raise DeviceError("fp16 is for GPUs; use --precision bf16 (or fp32) on the CPU")
    return chosen


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for the block (scoped, never process-wide): bf16/fp16 autocast, or plain fp32.

    On the CPU the block also flushes subnormal floats to zero on every PyTorch thread
    (:func:`grounded.runtime.denormals.flush_denormals`: they can make x86 matmuls an order of magnitude slower) and
    keeps freed memory for reuse (:func:`grounded.runtime.memory.reuse_freed_memory`: no page faults on each
    large temporary tensor). Both are undone when the block ends; the allocator setting is the process's
    while the block lasts.
    """
    precision = resolve_precision(precision, device)
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is for GPUs; use bf16 on the CPU")
    with contextlib.ExitStack() as stack:
        if device.type == "cpu":
            stack.enter_context(flush_denormals())
            stack.enter_context(reuse_freed_memory())
        if precision != "fp32":
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            stack.enter_context(torch.autocast(device_type=device.type, dtype=dtype))
        yield
