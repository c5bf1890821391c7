"""The files of ``grounded track``: annotated mp4, per-frame JSON / JSON Lines, MOTS txt, DAVIS PNGs, summary.

Every file appears whole or not at all: streams (mp4, ``frames.jsonl``, ``mots.txt``) are written into
temporary files renamed into place when the video is done; per-frame files are written atomically one by
one; ``tracks.json`` (the summary) is written last, so its presence means the run finished.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from grounded.core.detections import Detections
from grounded.core.errors import UserError
from grounded.core.files import (
    OutputFolder,
    atomic_write_bytes,
    atomic_write_text,
    compact_json,
    open_folder,
    temp_path,
)
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.core.rle import encode_masks
from grounded.core.tracks import TrackBook
from grounded.core.video import VideoSource, VideoWriter, open_video
from grounded.tasks.datasets import voc_palette
from grounded.tasks.track import TrackFrame, Tracking, resolve_options, track

__all__ = ["FORMATS", "TrackSummary", "draw_tracks", "label_image", "mots_lines", "track_files"]

#: what ``--format`` may list
FORMATS = ("mp4", "json", "jsonl", "mots", "png")
SUMMARY = "tracks.json"


@dataclass
class TrackSummary:
    """What a run did: frames, tracks, files written, why reading stopped early (if it did), frames/s."""

    frames: int = 0
    tracks: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def label_image(det: Detections) -> np.ndarray:
    """``(H, W)`` int64 track-id image: 0 background; where masks overlap the higher score wins (then the
    lower id), so every pixel belongs to one track (what MOTS and DAVIS files need)."""
    labels = np.zeros(det.image_size, dtype=np.int64)
    if not len(det) or det.track_ids is None:
        return labels
    ids = det.track_ids.tolist()
    scores = det.scores.tolist()
    for i in sorted(range(len(det)), key=lambda i: (scores[i], -ids[i])):  # the best is painted last
        labels[det.mask_array(i)] = ids[i]
    return labels


def mots_lines(index: int, det: Detections, labels: np.ndarray) -> list[str]:
    """MOTS txt lines of one frame: ``time_frame id class_id img_height img_width rle``.

    ``time_frame`` counts from 1 (MOTSChallenge), ``id`` is the track id (unique in the video),
    ``class_id`` the prompt class's position counting from 1 (``"car . pedestrian"`` gives KITTI MOTS's
    car 1, pedestrian 2); masks do not overlap (see :func:`label_image`).
    """
    if det.track_ids is None:
        return []
    height, width = det.image_size
    lines = []
    for tid, cid in sorted(zip(det.track_ids.tolist(), det.class_ids.tolist(), strict=True)):
        mask = labels == tid
        if not mask.any():
            continue
        rle = encode_masks(mask[None])[0]
        lines.append(f"{index + 1} {tid} {cid + 1} {height} {width} {rle['counts']}\n")
    return lines


def _indexed_png(labels: np.ndarray) -> bytes:
    """DAVIS-style indexed PNG (palette, value = track id) while ids fit 8 bits, else 16-bit gray."""
    import io

    from PIL import Image

    from grounded.core.files import encode_png

    if labels.max(initial=0) > 255:
        return encode_png(labels.astype(np.uint16))
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())  # DAVIS uses the PASCAL VOC colours
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def draw_tracks(image: LoadedImage, det: Detections) -> np.ndarray:
    """The frame with masks, boxes and ``class #id`` labels drawn by supervision, coloured by track."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*OpenCV.*not installed", category=UserWarning)
        import supervision as sv

    if not len(det):
        return image.pixels.copy()
    sv_det = det.to_supervision()
    height, width = image.size
    thickness = sv.calculate_optimal_line_thickness((width, height))
    text_scale = max(0.4, sv.calculate_optimal_text_scale((width, height)))
    ids = det.track_ids.tolist() if det.track_ids is not None else [0] * len(det)
    labels = [f"{name} #{tid}" for name, tid in zip(det.class_names, ids, strict=True)]
    lookup = sv.ColorLookup.TRACK
    scene = np.ascontiguousarray(image.pixels[..., ::-1])  # supervision draws in BGR order
    scene = sv.MaskAnnotator(color_lookup=lookup).annotate(scene, sv_det)
    scene = sv.BoxAnnotator(thickness=thickness, color_lookup=lookup).annotate(scene, sv_det)
    scene = sv.LabelAnnotator(
        color_lookup=lookup, text_scale=text_scale, text_thickness=max(1, thickness // 2)
    ).annotate(scene, sv_det, labels=labels)
    return np.ascontiguousarray(scene[..., ::-1])


def _frame_record(frame: TrackFrame) -> dict[str, Any]:
    height, width = frame.detections.image_size
    return {
        "frame": frame.index,
        "image": {"file_name": frame.image.name, "height": height, "width": width},
        "classes": list(frame.detections.classes),
        "detections": frame.detections.to_coco_records(),
    }


class _Stream:
    """A text file written through a temporary file and renamed into place by :meth:`finish`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = temp_path(path.parent)
        self.file: IO[str] = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed by finish/abort

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def _parse_formats(formats: str | Sequence[str]) -> list[str]:
    items = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = sorted(set(items) - set(FORMATS))
    if unknown or not items:
        raise UserError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got {formats!r}")
    return list(dict.fromkeys(items))


def track_files(
    tracking: Tracking,
    video: str | Path,
    prompt: str | Prompt,
    out: Path | OutputFolder,
    *,
    formats: str | Sequence[str] = "mp4,json,mots",
    detect_every: int | None = None,
    max_lost: int | None = None,
    reverse: bool = False,
    fps: float | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> TrackSummary:
    """Track ``video`` and write the chosen ``formats`` into ``out`` (see the module docstring)."""
    chosen = _parse_formats(formats)
    resolve_options(tracking.tracker, detect_every, max_lost, reverse)  # refused before anything is written
    source = open_video(video, fps=fps)
    prompt = Prompt.of(prompt)
    with open_folder(out) as folder:
        root = folder.path
        if (root / SUMMARY).exists() and not overwrite:
            raise UserError(
                f"{root} already holds a finished track run ({SUMMARY}); use --overwrite to replace it"
            )
        if (
            "mp4" in chosen
            and source.path.is_file()
            and (root / "video.mp4").resolve() == source.path.resolve()
        ):
            raise UserError(f"{root / 'video.mp4'} is the input video; choose another --out")
        for sub, fmt in (("frames", "json"), ("masks", "png")):
            if fmt in chosen:
                (root / sub).mkdir(exist_ok=True)
        return _write(tracking, source, prompt, root, chosen, detect_every, max_lost, reverse, quiet)


def _write(
    tracking: Tracking,
    source: VideoSource,
    prompt: Prompt,
    root: Path,
    chosen: list[str],
    detect_every: int | None,
    max_lost: int | None,
    reverse: bool,
    quiet: bool,
) -> TrackSummary:
    from tqdm import tqdm

    summary = TrackSummary()
    book = TrackBook()
    writer = VideoWriter(root / "video.mp4", source.fps, source.size) if "mp4" in chosen else None
    streams = {
        fmt: _Stream(root / name)
        for fmt, name in (("jsonl", "frames.jsonl"), ("mots", "mots.txt"))
        if fmt in chosen
    }
    start = time.perf_counter()
    bar = tqdm(total=source.frame_count, unit="frame", disable=quiet, file=sys.stderr, desc="track")
    try:
        frames: Iterable[TrackFrame] = track(
            source, prompt, tracking, detect_every=detect_every, max_lost=max_lost, reverse=reverse, book=book
        )
        for frame in frames:
            det = frame.detections
            if writer is not None:
                writer.write(draw_tracks(frame.image, det))
            if "json" in chosen:
                atomic_write_text(
                    root / "frames" / f"{frame.index:06d}.json", compact_json(_frame_record(frame))
                )
            if "jsonl" in streams:
                streams["jsonl"].file.write(compact_json(_frame_record(frame)))
            if "mots" in streams or "png" in chosen:
                labels = label_image(det)
                if "mots" in streams:
                    streams["mots"].file.writelines(mots_lines(frame.index, det, labels))
                if "png" in chosen:
                    atomic_write_bytes(root / "masks" / f"{frame.index:06d}.png", _indexed_png(labels))
            summary.frames += 1
            bar.update(1)
    except BaseException:
        if writer is not None:
            writer.abort()
        for stream in streams.values():
            stream.abort()
        raise
    finally:
        bar.close()
    if writer is not None:
        writer.close()
        summary.files.append(writer.path)
    for stream in streams.values():
        stream.finish()
        summary.files.append(stream.path)
    summary.seconds = time.perf_counter() - start
    summary.tracks = book.summary(prompt.classes)
    summary.error = source.error
    if summary.frames == 0 and summary.error is None:
        summary.error = f"{source.path}: no frames"
    detect_every, max_lost = resolve_options(tracking.tracker, detect_every, max_lost, reverse)
    record = {
        "video": {
            "path": str(source.path),
            "fps": float(source.fps),
            "height": source.size[0],
            "width": source.size[1],
        },
        "frames": summary.frames,
        "classes": list(prompt.classes),
        "settings": {
            **tracking.settings,
            "detect_every": detect_every,
            "max_lost": max_lost,
            "reverse": reverse,
        },
        "tracks": summary.tracks,
        "error": summary.error,
        "frames_per_second": round(summary.frames / summary.seconds, 3) if summary.seconds > 0 else None,
    }
    import json

    atomic_write_text(root / SUMMARY, json.dumps(record, indent=1, allow_nan=False) + "\n")
    summary.files.append(root / SUMMARY)
    return summary
