"""Loading images from files, arrays and PIL images into one form: 8-bit RGB numpy pixels.

Every loader returns a :class:`LoadedImage` whose ``pixels`` are a C-contiguous ``(H, W, 3)`` uint8 RGB array,
with the EXIF orientation already applied. Grayscale, 16-bit, palette, CMYK and YCbCr images are converted;
transparent pixels are composited onto **white** (what most image viewers show). A file that is missing,
not an image, truncated or empty raises :class:`ImageLoadError` with a one-line message naming the file.

Limits, checked from the file's header before any pixel is decoded: at most :func:`max_pixels` pixels
(``GROUNDED_MAX_PIXELS``, default :data:`DEFAULT_MAX_PIXELS`), a long side at most :data:`MAX_ASPECT_RATIO`
times the short one (the models' resizing would make the short side 0 pixels), and only regular files (a
FIFO, device or socket is refused before it is opened for reading, so it cannot block). Of an animated or
multi-page file only the first frame is read, with a warning naming the file and its frame count.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from grounded.core.errors import UserError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_ASPECT_RATIO",
    "MAX_PIXELS_ENV",
    "ImageLoadError",
    "ImageSource",
    "LoadedImage",
    "load_image",
    "load_image_bytes",
    "load_images",
    "max_pixels",
    "unique_names",
]

_log = logging.getLogger(__name__)

MAX_PIXELS_ENV = "GROUNDED_MAX_PIXELS"
#: Pillow's own refusal threshold (twice ``Image.MAX_IMAGE_PIXELS``), about 179 MP, e.g. 13,000 x 13,700
DEFAULT_MAX_PIXELS = 178_956_970
#: the longest side may be at most this many times the shortest (Grounding DINO's resize needs <= 1333)
MAX_ASPECT_RATIO = 1000

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """One decoded image.

    Attributes:
        pixels: ``(H, W, 3)`` uint8 RGB, C-contiguous. Treat it as read-only: :attr:`key` hashes it once.
        name: the file stem, or the name given when loading.
        path: the file it was read from, if any.
    """

    pixels: np.ndarray = field(repr=False)
    name: str
    path: Path | None = None

    def __post_init__(self) -> None:
        p = self.pixels
        if not isinstance(p, np.ndarray) or p.dtype != np.uint8 or p.ndim != 3 or p.shape[2] != 3:
            raise ValueError(
                f"pixels must be a (H, W, 3) uint8 array, got {getattr(p, 'dtype', type(p))} "
                f"{getattr(p, 'shape', '')}"
            )
        if not p.flags.c_contiguous:
            raise ValueError("pixels must be C-contiguous (use np.ascontiguousarray)")

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @cached_property
    def key(self) -> str:
        """Content hash of the pixels (32 hex characters); independent of name and path."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr(self.pixels.shape).encode("ascii"))
        digest.update(self.pixels.data)
        return digest.hexdigest()


class ImageLoadError(Exception):
    """An image could not be loaded; ``str(error)`` is one line, e.g. ``"a.png: file not found"``."""

    def __init__(self, path: Path | None, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        where = str(self.path) if self.path is not None else "<image>"
        return f"{where}: {self.reason}"


ImageSource = str | Path | np.ndarray | Image.Image | LoadedImage


def load_image(source: ImageSource, name: str | None = None) -> LoadedImage:
    """Load a file path, numpy array, PIL image or :class:`LoadedImage` as 8-bit RGB.

    Numpy arrays may be ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA) of dtype uint8,
    uint16 or float in ``[0, 1]``; anything else raises ``ValueError``. Files and PIL images that cannot be
    decoded raise :class:`ImageLoadError`.
    """
    if isinstance(source, LoadedImage):
        return source if name is None or name == source.name else replace(source, name=name)
    if isinstance(source, np.ndarray):
        return LoadedImage(pixels=_array_to_rgb(source), name=name or "image")
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "") or ""
        path = Path(filename) if filename else None
        pixels = _guarded(lambda: _decode_pil(source, path), path)
        return LoadedImage(pixels=pixels, name=name or (path.stem if path else "image"), path=path)
    if isinstance(source, (str, Path)):
        path = Path(source)
        max_pixels()  # a bad GROUNDED_MAX_PIXELS is the user's error, not this image's
        return LoadedImage(pixels=_guarded(lambda: _read_file(path), path), name=name or path.stem, path=path)
    raise TypeError(f"cannot load an image from {type(source).__name__}")


def load_image_bytes(data: bytes, name: str = "image", limit: int | None = None) -> LoadedImage:
    """Decode an encoded image held in memory (an upload) with the same checks as a file: pixel count (at most
    ``limit``, default :func:`max_pixels`) and aspect ratio from the header, before any pixel is decoded.
    Raises :class:`ImageLoadError`."""
    where = Path(name)
    limit = max_pixels() if limit is None else min(limit, max_pixels())

    def decode() -> np.ndarray:
        with _open_limited(io.BytesIO(data), where, limit) as image:
            return _decode_pil(image, where, owned=True)

    return LoadedImage(pixels=_guarded(decode, where), name=where.stem or "image")


def load_images(sources: Iterable[ImageSource]) -> Iterator[LoadedImage | ImageLoadError]:
    """Load each source in order, yielding the :class:`ImageLoadError` of a bad file instead of raising."""
    for source in sources:
        try:
            yield load_image(source)
        except ImageLoadError as exc:
            yield exc


def unique_names(names: Sequence[str]) -> list[str]:
    """Make names unique by suffixing repeats: ``["a", "a", "b", "a"]`` -> ``["a", "a_1", "b", "a_2"]``.

    The first occurrence keeps its name; a suffix never collides with any name in the input. Names are
    compared case-insensitively, since they become file names on case-insensitive file systems.
    """
    taken = {n.casefold() for n in names}
    seen: set[str] = set()
    counters: dict[str, int] = {}
    out = []
    for name in names:
        folded = name.casefold()
        if folded not in seen:
            seen.add(folded)
            out.append(name)
            continue
        k = counters.get(folded, 0)
        while True:
            k += 1
            candidate = f"{name}_{k}"
            if candidate.casefold() not in taken:
                break
        counters[folded] = k
        taken.add(candidate.casefold())
        out.append(candidate)
    return out


# ---------------------------------------------------------------------- decoding
def max_pixels() -> int:
    """The most pixels an image file may have: ``GROUNDED_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not value:
        return DEFAULT_MAX_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def _read_file(path: Path) -> np.ndarray:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as stream:
        mode = os.fstat(stream.fileno()).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(str(path))
        if not stat.S_ISREG(mode):
            raise ImageLoadError(path, f"not a regular file ({_file_kind(mode)}); give an image file")
        with _open_limited(stream, path) as image:
            return _decode_pil(image, path, owned=True)


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a plain file"


def _open_limited(stream: Any, path: Path, limit: int | None = None) -> Image.Image:
    """Open (header only) and check size (at most ``limit`` pixels, default :func:`max_pixels`), aspect ratio
    and frames before anything is decoded."""
    limit = max_pixels() if limit is None else limit
    if Image.MAX_IMAGE_PIXELS is not None and limit >= 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit // 2 + 1  # our limit replaces Pillow's (which refuses at twice it)
    with warnings.catch_warnings():  # Pillow warns from half its limit on; ours is checked just below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(path, _too_large(exc, limit)) from exc
    width, height = image.size
    if width * height > limit:
        image.close()
        raise ImageLoadError(path, _too_large(f"{width}x{height} = {width * height:,} pixels", limit))
    if min(width, height) > 0 and max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        image.close()
        raise ImageLoadError(
            path,
            f"{width}x{height} pixels: the long side is over {MAX_ASPECT_RATIO} times the short one "
            "(the models' resizing would leave the short side 0 pixels)",
        )
    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1:
        _log.warning("%s: %d frames (animated or multi-page); only the first frame is used", path, frames)
    return image


def _too_large(detail: object, limit: int) -> str:
    text = _one_line(detail) if isinstance(detail, BaseException) else str(detail)
    return f"image too large ({text}; the limit is {limit:,} pixels, set {MAX_PIXELS_ENV} to change it)"


def _decode_pil(image: Image.Image, path: Path | None, owned: bool = False) -> np.ndarray:
    """Decode to RGB; ``owned``: the image is ours to change in place (saves a full-size copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image.load()  # force a full decode so that truncated files fail here
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(path, f"empty image ({image.width}x{image.height} pixels)")
    if owned:
        ImageOps.exif_transpose(image, in_place=True)
        return _pil_to_rgb(image)
    return _pil_to_rgb(ImageOps.exif_transpose(image))


def _guarded(decode: Callable[[], np.ndarray], path: Path | None) -> np.ndarray:
    """Run ``decode``, turning every failure into an :class:`ImageLoadError` with a one-line reason."""
    try:
        return decode()
    except (ImageLoadError, UserError):
        raise
    except FileNotFoundError as exc:
        raise ImageLoadError(path, "file not found") from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(path, "is a directory, not an image file") from exc
    except PermissionError as exc:
        raise ImageLoadError(path, "permission denied") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(path, "not an image file (cannot identify image file)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(path, _too_large(exc, max_pixels())) from exc
    except OSError as exc:
        if exc.errno is not None and exc.strerror:  # the system refused the file (a symlink loop, ...)
            raise ImageLoadError(path, f"cannot open ({exc.strerror})") from exc
        raise ImageLoadError(path, f"corrupt or truncated image ({_one_line(exc)})") from exc
    except Exception as exc:  # Pillow plugins raise many types (SyntaxError, ValueError, struct.error, ...)
        raise ImageLoadError(path, f"cannot decode image ({type(exc).__name__}: {_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode to ``(H, W, 3)`` uint8 RGB (16-bit scaled, alpha composited onto white)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:  # Pillow's own convert("L") clips 16-bit values instead of scaling them
        return _gray_to_rgb(_scale_uint16(np.clip(np.asarray(image), 0, 65535)))
    if mode == "F":  # float: [0, 1] is scaled to [0, 255]; any other range is read as 8-bit values
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return _gray_to_rgb(np.rint(np.clip(values, 0, 255)).astype(np.uint8))
    if mode in ("1", "L") and "transparency" not in image.info:
        return _gray_to_rgb(np.asarray(image.convert("L")))
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Validate and convert a numpy image to an owned ``(H, W, 3)`` uint8 RGB array."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(
            f"expected an image array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"empty image array of shape {array.shape}")
    if array.dtype == np.uint8:
        values = array
    elif array.dtype == np.uint16:
        values = _scale_uint16(array)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("float image arrays must hold finite values in [0, 1], got NaN or infinity")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(
                f"float image arrays must hold values in [0, 1], got [{array.min():.4g}, {array.max():.4g}]"
            )
        values = np.rint(array * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype {array.dtype}; expected uint8, uint16 or float in [0, 1]")
    if values.ndim == 2:
        return _gray_to_rgb(values)
    if values.shape[2] == 4:
        return _composite_on_white(values)
    return np.array(values, dtype=np.uint8, order="C", copy=True)


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    """0..65535 to 0..255 with rounding (65535 -> 255, 32768 -> 128)."""
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2), dtype=np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend ``(H, W, 4)`` uint8 RGBA onto a white background."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:].astype(np.uint32)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(out, dtype=np.uint8)
