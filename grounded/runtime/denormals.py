"""Flush subnormal floats to zero on every CPU thread PyTorch computes with, for the length of a block.

Why: on x86 CPUs an FMA that reads or writes a subnormal float (|x| < 1.2e-38) can take a microcode assist,
tens of times slower than a normal one. Networks hit that when a chain of products shrinks activations
without a normalisation rescaling them: transformers' SAM vision config initialises weights at std 1e-10,
and the exact-zero padding tokens of a non-square image (the image sits in the top-left of the padded
1024² input) have no variance for LayerNorm to rescale, so they lose ~8 orders of magnitude a matmul and
reach the subnormal range within a layer (measured: 15% of a layer's MLP outputs). Issue 8 measured the
fp32 SAM ViT-B encoder 12× slower on a 4:3 image than on a square one on an AMX CPU; on the AVX2 EPYC of
this project's CI the same model has the same subnormals and no slow-down.

``torch.set_flush_denormal`` sets the flush-to-zero / denormals-are-zero bits of the *calling* thread only;
PyTorch's OpenMP workers keep theirs, and a parallel region ends with its slowest thread: most likely why
calling it changed nothing in the issue's measurement. :func:`flush_denormals` runs ``set_flush_denormal`` inside an
OpenMP parallel region of the runtime PyTorch uses, so that each worker of the calling thread's team sets
its own bits, and puts the previous state back on exit. Values below 1.2e-38 become 0: nothing a network's
output can depend on.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["flush_denormals", "flushing_denormals", "set_flush_denormal_all_threads"]

_PARALLEL_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_lock = threading.Lock()


@functools.cache
def _gomp_parallel() -> Any | None:
    """``GOMP_parallel`` of the OpenMP runtime loaded in this process (libgomp, or LLVM / Intel's
    libomp / libiomp5, which export it too), or None where PyTorch does not run on OpenMP."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if line.split()[-1].startswith("/")}
    for path in sorted(p for p in paths if Path(p).name.startswith(("libgomp", "libomp", "libiomp"))):
        try:
            function = ctypes.CDLL(path).GOMP_parallel
        except (OSError, AttributeError):
            continue
        function.argtypes = [_PARALLEL_FN, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        function.restype = None
        return function
    return None


def flushing_denormals() -> bool:
    """Whether the calling thread flushes subnormals (a subnormal input reads as zero)."""
    tiny = torch.tensor(1e-39, dtype=torch.float32)  # one element: computed in this thread
    return bool((tiny * 1.0).item() == 0.0)


def set_flush_denormal_all_threads(on: bool) -> bool:
    """Set flush-to-zero / denormals-are-zero on this thread and on every worker of its OpenMP team.

    Returns False where the CPU has no such mode (``torch.set_flush_denormal``'s answer). Without an OpenMP
    runtime to reach the workers only this thread is set.
    """
    if not torch.set_flush_denormal(on):
        return False
    parallel = _gomp_parallel()
    if parallel is not None and torch.get_num_threads() > 1:
        callback = _PARALLEL_FN(lambda _: torch.set_flush_denormal(on))
        with _lock:  # ctypes releases the GIL during the call; the workers take it in turn
            parallel(callback, None, torch.get_num_threads(), 0)
    return True


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush subnormals to zero on every PyTorch CPU thread inside the block.

    Afterwards the threads flush again only if the calling thread did before (then the caller asked for it).
    """
    before = flushing_denormals()
    changed = set_flush_denormal_all_threads(True) and not before
    try:
        yield
    finally:
        if changed:
            set_flush_denormal_all_threads(False)
