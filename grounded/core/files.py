"""Writing files atomically (temporary file in the same folder, ``fsync``, ``os.replace``), encoding PNGs, and
preparing output folders, so that an interrupted run never leaves a half-written file behind.

Every temporary file or folder grounded makes is named ``.grounded-PID-XXXXXXXX.tmp`` (short, whatever the
target's name): :func:`remove_stale_temps` recognises those of processes that are no longer running (a run
killed by ``kill -9``) and removes them, and nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from grounded.core.errors import UserError

__all__ = [
    "JsonText",
    "OutputFolder",
    "atomic_write_bytes",
    "atomic_write_text",
    "compact_json",
    "encode_png",
    "make_temp_dir",
    "open_folder",
    "remove_stale_temps",
    "temp_path",
]

_TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\.grounded-(\d+)-[A-Za-z0-9_]+\.tmp")


def _temp_prefix() -> str:
    return f".grounded-{os.getpid()}-"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; on failure ``path`` is unchanged, no temp file is left."""
    path = Path(path)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(), suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)  # mkstemp creates files readable by the owner only
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def temp_path(directory: Path) -> Path:
    """A free temporary name in ``directory`` (for ``os.link`` and the like), known to :func:`remove_stale_temps`."""
    return Path(directory) / f"{_temp_prefix()}{secrets.token_hex(4)}{_TEMP_SUFFIX}"


def make_temp_dir(parent: Path) -> Path:
    """A new empty temporary folder in ``parent``, named so that :func:`remove_stale_temps` knows it."""
    return Path(tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(), suffix=_TEMP_SUFFIX))


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself (best effort; not possible on every platform)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (``True`` when that cannot be known)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # not a pid this system can have
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporary files and folders that grounded processes no longer running left in ``directory``
    (e.g. after ``kill -9``); returns what was removed. Other files are never touched."""
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _TEMP_NAME.fullmatch(entry.name)
            if match is None or _running(int(match.group(1))):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


class OutputFolder:
    """The output folder of one run (``with OutputFolder(path) as out:``).

    Entering creates it if missing, refuses (one-line :class:`~grounded.core.errors.UserError`) a path that
    is not a folder or where no file can be created (a probe file is written and removed: read-only mounts,
    ``/proc``, ``/sys``, missing permissions), and removes stale temporary files. Leaving removes the
    folders this run created if nothing was written in them. ``what`` names the path in messages.
    """

    def __init__(self, path: Path, what: str = "--out") -> None:
        self.path = Path(path)
        self.what = what
        self._created: list[Path] = []  # deepest first
        self._open = False

    def open(self) -> OutputFolder:
        """Create, probe and clean the folder (see the class); returns ``self``."""
        if self._open:
            return self
        path = self.path
        try:
            if path.exists() and not path.is_dir():
                raise UserError(f"{self.what} {path} exists and is not a folder; choose a folder")
            missing, parent = [], path.absolute()
            while not parent.exists() and parent != parent.parent:
                missing.append(parent)
                parent = parent.parent
            path.mkdir(parents=True, exist_ok=True)
            self._created = missing
            self._open = True
        except OSError as exc:
            raise UserError(f"cannot create {self.what} {path}: {exc.strerror or exc}") from None
        try:
            fd, probe = tempfile.mkstemp(dir=path, prefix=_temp_prefix(), suffix=_TEMP_SUFFIX)
            os.close(fd)
            os.unlink(probe)
            remove_stale_temps(path)
        except OSError as exc:
            self.close()
            raise UserError(f"cannot write in {self.what} {path}: {exc.strerror or exc}") from None
        return self

    def close(self) -> None:
        """Remove the folders this run created, if they are empty."""
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []
        self._open = False

    def __enter__(self) -> OutputFolder:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def open_folder(out: Path | OutputFolder, what: str = "--out") -> Iterator[OutputFolder]:
    """``out`` as an open :class:`OutputFolder`: an open one as it is (its owner closes it), a path opened
    and closed here."""
    if isinstance(out, OutputFolder) and out._open:
        yield out
        return
    with out if isinstance(out, OutputFolder) else OutputFolder(out, what) as folder:
        yield folder


class JsonText:
    """A value already written as JSON, which :func:`compact_json` puts in as it is (long number lists
    formatted faster than ``json`` formats floats)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def compact_json(obj: Any) -> str:
    """One line of JSON (no spaces, no NaN) and a newline; :class:`JsonText` values go in as they are."""
    texts: list[str] = []
    mark = secrets.token_hex(8)  # no string of the document can name a placeholder by chance

    def placeholder(value: Any) -> str:
        if not isinstance(value, JsonText):
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        texts.append(value.text)
        return f"\x00{mark}:{len(texts) - 1}"

    out = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=placeholder)
    if texts:
        out = re.sub(f'"\\\\u0000{mark}:(\\d+)"', lambda m: texts[int(m.group(1))], out)
    return out + "\n"


def encode_png(array: np.ndarray, text: Mapping[str, str] | None = None) -> bytes:
    """PNG bytes of uint8 ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA or ``(H, W)`` gray, or uint16 ``(H, W)``.

    uint16 images are stored as 16-bit grayscale and round-trip exactly. ``text``: compressed text chunks,
    written before the pixels (``Image.open(...).info`` has them without decoding the image).
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
    info = None
    if text:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value, zip=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
