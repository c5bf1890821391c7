"""Reading and writing video with PyAV (FFmpeg), one frame at a time: memory does not grow with length.

:func:`open_video` takes a video file (anything FFmpeg reads) or a folder of frame images (sorted by name)
and yields :class:`~grounded.core.images.LoadedImage` frames in order, rotated upright when the file carries
rotation metadata. The frame size is checked against the image pixel limit
(:func:`~grounded.core.images.max_pixels`) before any frame is decoded. A file that cannot be opened, has
no video stream or no frame, or a folder with no images, a file that is not an image or frames of
different sizes (every image header is read when the folder is opened) raises :class:`VideoError` (one
line). A file (or a folder image) that breaks off mid-stream yields the readable frames, then records why in
:attr:`VideoSource.error`. Variable frame rate videos are read frame by frame at their average rate.

:class:`VideoWriter` encodes H.264 (libx264, ``yuv420p``, ``+faststart``: plays in browsers) into a temporary
file renamed over the target when closed, so a crash never leaves half a video.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from grounded.core.errors import UserError
from grounded.core.files import temp_path
from grounded.core.images import ImageLoadError, LoadedImage, load_image, max_pixels

__all__ = ["IMAGE_SUFFIXES", "VideoError", "VideoSource", "VideoWriter", "open_video"]

_log = logging.getLogger(__name__)

#: the files of a frames folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class VideoError(UserError):
    """A video (or frames folder) that cannot be read; one line."""


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _check_size(what: str, height: int, width: int) -> None:
    limit = max_pixels()
    if height < 1 or width < 1:
        raise VideoError(f"{what}: frames of {width}x{height} pixels")
    if height * width > limit:
        raise VideoError(
            f"{what}: frames of {width}x{height} = {height * width:,} pixels exceed the limit of {limit:,} "
            "(GROUNDED_MAX_PIXELS)"
        )


class VideoSource:
    """Frames of a video file or a frames folder; see the module docstring.

    Attributes: ``fps`` (a ``Fraction``), ``size`` ``(height, width)`` of the upright frames, ``frame_count``
    (the container's count, or the number of images; ``None`` when unknown), ``name``, and after reading,
    ``error`` (why reading stopped early, else ``None``) and ``frames_read``.
    """

    def __init__(self, path: str | Path, fps: float | None = None) -> None:
        self.path = Path(path)
        self.name = self.path.stem if self.path.is_file() else self.path.name
        self.error: str | None = None
        self.frames_read = 0
        self._files: list[Path] | None = None
        self._rotation = 0
        if self.path.is_dir():
            self._probe_folder(fps)
        elif self.path.is_file():
            self._probe_file(fps)
        else:
            raise VideoError(f"{self.path}: no such video file or frames folder")

    # ------------------------------------------------------------------ probing
    def _probe_folder(self, fps: float | None) -> None:
        files = sorted(
            (p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
            key=_natural_key,
        )
        if not files:
            raise VideoError(f"{self.path}: no frame images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        size = _image_size(files[0])
        _check_size(str(files[0]), *size)
        for path in files[1:]:  # headers only: a mixed folder or a non-image is refused before any work
            other = _image_size(path)
            if other != size:
                raise VideoError(_mixed(path, other, size))
        self._files = files
        self.size = size
        self.fps = Fraction(fps if fps is not None else 30).limit_denominator(1001)
        self.frame_count: int | None = len(files)

    def _probe_file(self, fps: float | None) -> None:
        import av

        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise VideoError(f"{self.path}: no video stream")
                stream = container.streams.video[0]
                width, height = int(stream.codec_context.width), int(stream.codec_context.height)
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self.frame_count = int(stream.frames) or None
                first = next(container.decode(stream), None)
        except VideoError:
            raise
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoError(f"{self.path}: cannot read the video ({_one_line(exc)})") from None
        _check_size(str(self.path), height, width)
        if first is None:
            raise VideoError(f"{self.path}: the video has no frames")
        # the display matrix's counter-clockwise angle, to the nearest quarter turn
        self._rotation = round(float(getattr(first, "rotation", 0) or 0) / 90) * 90 % 360
        if self._rotation in (90, 270):
            height, width = width, height
        self.size = (height, width)
        if fps is not None:
            self.fps = Fraction(fps).limit_denominator(1001)
        elif rate:
            self.fps = Fraction(rate)
        else:
            self.fps = Fraction(30)

    # ------------------------------------------------------------------ reading
    def frames(self, start: int = 0) -> Iterator[LoadedImage]:
        """The frames in order, named ``NAME_000000`` by index, from frame ``start`` on (the earlier ones
        are decoded, as a video needs, but not converted or yielded); see the module docstring for errors."""
        self.error = None
        self.frames_read = 0
        source = self._folder_frames(start) if self._files is not None else self._file_frames(start)
        for image in source:
            self.frames_read += 1
            yield image

    def _folder_frames(self, start: int) -> Iterator[LoadedImage]:
        files = self._files or []
        for i in range(start, len(files)):
            try:
                image = load_image(files[i], name=f"{self.name}_{i:06d}")
            except ImageLoadError as exc:  # readable header, broken pixels: as a video that breaks off
                self.error = f"reading stopped after {i} frame(s): {exc}"
                _log.warning("%s", self.error)
                return
            if image.size != self.size:  # the probe read the headers; the pixels disagree
                raise VideoError(_mixed(files[i], image.size, self.size))
            yield image

    def _file_frames(self, start: int) -> Iterator[LoadedImage]:
        import av

        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"{self.path}: cannot read the video ({_one_line(exc)})") from None
        with container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            decoded = container.decode(stream)
            i = 0
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    break
                except (av.FFmpegError, OSError, ValueError) as exc:
                    self.error = f"{self.path}: reading stopped after {i} frame(s): {_one_line(exc)}"
                    _log.warning("%s", self.error)
                    break
                if i < start:
                    i += 1
                    continue
                pixels = frame.to_ndarray(format="rgb24")
                if self._rotation:
                    pixels = np.ascontiguousarray(np.rot90(pixels, k=self._rotation // 90))
                if pixels.shape[:2] != self.size:
                    self.error = f"{self.path}: frame {i} changes size to {pixels.shape[1]}x{pixels.shape[0]}"
                    _log.warning("%s", self.error)
                    break
                yield LoadedImage(pixels=pixels, name=f"{self.name}_{i:06d}", path=self.path)
                i += 1
        if i == 0 and self.error is None:
            self.error = f"{self.path}: the video has no decodable frames"
        elif self.error is None and self.frame_count and i < self.frame_count:
            self.error = (
                f"{self.path}: the video ends after {i} of its {self.frame_count} frames (truncated?)"
            )
            _log.warning("%s", self.error)


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file as :func:`~grounded.core.images.load_image` will give it (EXIF
    orientation applied), from its header."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                orientation = image.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable image ({_one_line(exc)})") from None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _mixed(path: Path, size: tuple[int, int], expected: tuple[int, int]) -> str:
    return (
        f"{path}: frame of {size[1]}x{size[0]} in a folder of {expected[1]}x{expected[0]} frames; "
        "all frames must have one size"
    )


def open_video(path: str | Path, fps: float | None = None) -> VideoSource:
    """A :class:`VideoSource` for a video file or frames folder (``fps`` overrides the rate; a folder's
    default is 30)."""
    return VideoSource(path, fps)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class VideoWriter:
    """H.264 mp4 written frame by frame into a temporary file, renamed to ``path`` by :meth:`close`.

    Frames are ``(H, W, 3)`` uint8 RGB of ``size``; an odd width or height (``yuv420p`` needs even ones) is
    padded by one edge pixel. :meth:`abort` (or leaving a ``with`` block by an exception) removes the
    temporary file and leaves ``path`` as it was.
    """

    def __init__(self, path: str | Path, fps: Fraction | float, size: tuple[int, int], crf: int = 20) -> None:
        import av

        self.path = Path(path)
        self.size = size
        self._tmp = temp_path(self.path.parent)
        self._container: Any = av.open(str(self._tmp), "w", format="mp4", options={"movflags": "+faststart"})
        rate = Fraction(fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width = size[1] + size[1] % 2
        stream.height = size[0] + size[0] % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        self._stream = stream
        self.frames_written = 0

    def write(self, rgb: np.ndarray) -> None:
        """Encode one frame."""
        import av

        if rgb.shape != (*self.size, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 {(*self.size, 3)}, got {rgb.dtype} {rgb.shape}")
        pad = ((0, self.size[0] % 2), (0, self.size[1] % 2), (0, 0))
        if any(p[1] for p in pad):
            rgb = np.pad(rgb, pad, mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and move the finished file into place."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
