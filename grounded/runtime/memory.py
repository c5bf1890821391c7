"""Keep freed memory in the process during model calls, so that large CPU tensors reuse faulted-in pages.

Why: glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and returns it with ``munmap`` on free, so each large temporary tensor (a SAM ViT-B MLP activation is 48 MiB,
a Grounding DINO encoder FFN activation 104 MiB) is zero-filled page by page on first touch, every time.
Measured on the 2-core CI machine: about 1 million page faults per image through Grounding DINO Swin-T +
HQ-SAM ViT-B, 15% of the time of each (SAM encoder 12.1 → 10.3 s, detector 6.1 → 5.2 s, interleaved in
one process). PyTorch's CUDA allocator caches blocks for this reason; its CPU allocator does not.

:func:`reuse_freed_memory` sets ``M_MMAP_MAX = 0`` (large blocks come from the heap too) and a high
``M_TRIM_THRESHOLD`` (freed memory stays in the heap) for the length of the block, and glibc's defaults
after it, so the memory is given back once the outermost block ends. Nothing happens where the C library is
not glibc, or with ``GROUNDED_REUSE_FREED_MEMORY=0``. It pays for threads served by glibc's main arena (the
main thread, where a ``grounded`` run computes): other arenas map blocks over 64 MiB whatever mallopt says.
Not every freed block is reused (PyTorch aligns its blocks to 64 bytes, which asks glibc for slightly more
than a freed block of the same size holds), but most are: the page faults above fell from about 1 million to
90 thousand an image.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["reuse_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
_KEEP_BYTES = 2**31 - 1  # the largest threshold mallopt takes: "never trim" inside the block

_lock = threading.Lock()
_depth = 0


@functools.cache
def _glibc() -> Any | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): leave the allocator alone
        return None
    version.restype = ctypes.c_char_p
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc if version() else None


def _enabled() -> bool:
    return os.environ.get("GROUNDED_REUSE_FREED_MEMORY", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Inside the block, freed memory stays in the process for the next allocation; yields whether it does.

    Blocks nest (the outermost one restores glibc's defaults and trims the heap); thread-safe.
    """
    global _depth
    libc = _glibc() if _enabled() else None
    if libc is None:
        yield False
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
