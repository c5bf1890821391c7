"""Loading images from files, arrays and PIL images into one form: 8-bit RGB numpy pixels.

Every loader returns a :class:`LoadedImage` whose ``pixels`` are a C-contiguous ``(H, W, 3)`` uint8 RGB array,
with the EXIF orientation already applied. Grayscale, 16-bit, palette, CMYK and YCbCr images are converted;
transparent pixels are composited onto **white** (what most image viewers show). A file that is missing,
not an image, truncated or empty raises :class:`ImageLoadError` with a one-line message naming the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageLoadError", "ImageSource", "LoadedImage", "load_image", "load_images", "unique_names"]

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
        return LoadedImage(pixels=_guarded(lambda: _read_file(path), path), name=name or path.stem, path=path)
    raise TypeError(f"cannot load an image from {type(source).__name__}")


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
def _read_file(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return _decode_pil(image, path)


def _decode_pil(image: Image.Image, path: Path | None) -> np.ndarray:
    image.load()  # force a full decode so that truncated files fail here
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(path, f"empty image ({image.width}x{image.height} pixels)")
    return _pil_to_rgb(ImageOps.exif_transpose(image))


def _guarded(decode: Callable[[], np.ndarray], path: Path | None) -> np.ndarray:
    """Run ``decode``, turning every failure into an :class:`ImageLoadError` with a one-line reason."""
    try:
        return decode()
    except ImageLoadError:
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
        raise ImageLoadError(path, f"image too large ({_one_line(exc)})") from exc
    except OSError as exc:
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
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


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
