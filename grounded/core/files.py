"""Writing files atomically (temporary file in the same folder, ``fsync``, ``os.replace``) and encoding PNGs,
so that an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["atomic_write_bytes", "atomic_write_text", "compact_json", "encode_png"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; on failure ``path`` is unchanged, no temp file is left."""
    path = Path(path)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, delete=False, prefix="." + path.name, suffix=".tmp"
        ) as tmp:
            tmp_name = tmp.name
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)  # NamedTemporaryFile creates files readable by the owner only
        os.replace(tmp_name, path)
    except BaseException:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself (best effort; not possible on every platform)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def compact_json(obj: Any) -> str:
    """One line of JSON (no spaces, no NaN) and a newline."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n"


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of uint8 ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA or ``(H, W)`` gray, or uint16 ``(H, W)``.

    uint16 images are stored as 16-bit grayscale and round-trip exactly.
    """
    modes = {(np.dtype(np.uint8), 2): "L", (np.dtype(np.uint8), 3): "RGB", (np.dtype(np.uint8), 4): "RGBA"}
    if array.dtype == np.uint16 and array.ndim == 2:
        mode = "I;16"
    elif array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        mode = modes.get((array.dtype, 2 if array.ndim == 2 else array.shape[2]), "")
    else:
        mode = ""
    if not mode:
        raise ValueError(
            f"encode_png needs uint8 (H, W[, 3|4]) or uint16 (H, W), got {array.dtype} {array.shape}"
        )
    if mode == "I;16":
        array = array.astype("<u2", copy=False)  # PNG's 16-bit gray is read by Pillow as little-endian I;16
    image = Image.fromarray(np.ascontiguousarray(array))
    if image.mode != mode:  # pragma: no cover - guards against Pillow changing its array mapping
        raise RuntimeError(
            f"Pillow made a {image.mode} image from {array.dtype} {array.shape}, expected {mode}"
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
