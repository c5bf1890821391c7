"""The files of ``grounded track``: annotated mp4, per-frame JSON / JSON Lines, MOTS txt, DAVIS PNGs, summary.

Every file appears whole or not at all: streams (mp4, ``frames.jsonl``, ``mots.txt``) are written into
a temporary file (the mp4) or ``checkpoint/`` (the others) and moved into place when the video is done;
per-frame files are written atomically one by one; ``tracks.json`` (the summary) is written last, so its
presence means the run finished. Interrupted runs resume from their last checkpoint
(:mod:`grounded.tasks.track_resume`).
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grounded.core.detections import Detections
from grounded.core.errors import UserError
from grounded.core.files import (
    OutputFolder,
    atomic_write_bytes,
    atomic_write_text,
    compact_json,
    open_folder,
)
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.core.rle import encode_masks
from grounded.core.tracks import TrackBook
from grounded.core.video import VideoSource, VideoWriter, open_video
from grounded.tasks.datasets import voc_palette
from grounded.tasks.track import TrackFrame, Tracking, resolve_options, track
from grounded.tasks.track_resume import (
    CHECKPOINT_DIR,
    STATE,
    Checkpoint,
    CheckpointWriter,
    Stream,
    detections_from_line,
    detections_line,
    input_fingerprint,
    load_checkpoint,
    settings_diff,
)

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
    seconds: float = 0.0  # of this process (a resumed run: since the resume)
    resumed_at: int | None = None  # the frame a resumed run continued at


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
    checkpoint_every: float | None = 60.0,
) -> TrackSummary:
    """Track ``video`` and write the chosen ``formats`` into ``out`` (see the module docstring).

    A checkpoint is taken at the first key-frame segment end ``checkpoint_every`` seconds after the last
    (0: at every one; ``None``: never). An interrupted run in ``out`` with the same settings and input is
    resumed; one with other settings is refused (``overwrite`` discards it).
    """
    chosen = _parse_formats(formats)
    resolve_options(tracking.tracker, detect_every, max_lost, reverse)  # refused before anything is written
    source = open_video(video, fps=fps)
    prompt = Prompt.of(prompt)
    if checkpoint_every is not None and not checkpoint_every >= 0:
        raise UserError(f"--checkpoint-every takes seconds >= 0 or 'off', got {checkpoint_every}")
    with open_folder(out) as folder:
        root = folder.path
        work = root / CHECKPOINT_DIR
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
        settings = {
            "input": input_fingerprint(source),
            "classes": list(prompt.classes),
            "formats": sorted(chosen),
            "detect_every": detect_every,
            "max_lost": max_lost,
            "reverse": reverse,
            "tracking": tracking.settings,
        }
        checkpoint = None if overwrite or not work.is_dir() else load_checkpoint(work)
        if checkpoint is not None:
            diff = settings_diff(checkpoint.settings, settings)
            if diff:
                shown = ", ".join(diff[:4]) + (", ..." if len(diff) > 4 else "")
                raise UserError(
                    f"{root} holds an interrupted run of other settings or input ({shown} differ); rerun it "
                    "with its settings to resume it, or use --overwrite to start over"
                )
        else:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(exist_ok=True)
        for sub, fmt in (("frames", "json"), ("masks", "png")):
            if fmt in chosen:
                (root / sub).mkdir(exist_ok=True)
        every = checkpoint_every if tracking.tracker.resumable else None
        return _write(
            tracking, source, prompt, root, chosen, detect_every, max_lost, reverse, quiet, settings,
            checkpoint, every,
        )  # fmt: skip


def _redraw(writer: VideoWriter, source: VideoSource, log: Path, count: int, prompt: Prompt) -> None:
    """Encode the first ``count`` frames of an interrupted run again, drawn from their logged detections."""
    frames = source.frames()
    with open(log, encoding="utf-8") as lines:
        for index, (image, line) in enumerate(zip(frames, lines, strict=False)):
            if index == count:
                break
            writer.write(draw_tracks(image, detections_from_line(line, prompt.classes, source.size)))
    frames.close()  # type: ignore[attr-defined]
    if writer.frames_written != count:
        raise UserError(
            f"the checkpoint in {log.parent} is damaged ({log.name} or the video holds fewer than {count} "
            "frames); use --overwrite to start over"
        )


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
    settings: dict[str, Any],
    checkpoint: Checkpoint | None,
    every: float | None,
) -> TrackSummary:
    from tqdm import tqdm

    work = root / CHECKPOINT_DIR
    summary = TrackSummary()
    book = TrackBook()
    start = checkpoint.state.next_index if checkpoint is not None else 0
    names = [(fmt, name) for fmt, name in (("jsonl", "frames.jsonl"), ("mots", "mots.txt")) if fmt in chosen]
    if "mp4" in chosen:
        names.append(("render", "render.jsonl"))  # exact detections: the mp4 is drawn from them on resume
    streams: dict[str, Stream] = {}
    writer: VideoWriter | None = None
    bar = tqdm(
        total=source.frame_count, initial=start, unit="frame", disable=quiet, file=sys.stderr, desc="track"
    )
    begin = time.perf_counter()
    try:
        for fmt, name in names:
            at = None if checkpoint is None else checkpoint.streams.get(fmt, -1)
            streams[fmt] = Stream(work / name, root / name, at)
        if "mp4" in chosen:
            writer = VideoWriter(root / "video.mp4", source.fps, source.size)
            if start:
                _redraw(writer, source, work / "render.jsonl", start, prompt)
        checkpoints = None if every is None else CheckpointWriter(work, settings, streams, every)
        summary.frames = start
        summary.resumed_at = start if checkpoint is not None else None
        begin = time.perf_counter()
        frames: Iterable[TrackFrame] = track(
            source, prompt, tracking, detect_every=detect_every, max_lost=max_lost, reverse=reverse, book=book,
            checkpoints=checkpoints, resume=checkpoint.state if checkpoint is not None else None,
        )  # fmt: skip
        for frame in frames:
            det = frame.detections
            if writer is not None:
                writer.write(draw_tracks(frame.image, det))
                streams["render"].write(detections_line(det))
            if "json" in chosen:
                atomic_write_text(
                    root / "frames" / f"{frame.index:06d}.json", compact_json(_frame_record(frame))
                )
            if "jsonl" in streams:
                streams["jsonl"].write(compact_json(_frame_record(frame)))
            if "mots" in streams or "png" in chosen:
                labels = label_image(det)
                if "mots" in streams:
                    streams["mots"].writelines(mots_lines(frame.index, det, labels))
                if "png" in chosen:
                    atomic_write_bytes(root / "masks" / f"{frame.index:06d}.png", _indexed_png(labels))
            summary.frames += 1
            bar.update(1)
    except BaseException:
        if writer is not None:
            writer.abort()
        for stream in streams.values():
            stream.close()
        if not (work / STATE).exists():  # nothing to resume from
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        bar.close()
    (work / STATE).unlink(missing_ok=True)  # no longer resumable: a kill from here on starts over
    if writer is not None:
        writer.close()
        summary.files.append(writer.path)
    for fmt, stream in streams.items():
        if fmt == "render":
            stream.close()
            continue
        stream.finish()
        summary.files.append(stream.final)
    summary.seconds = time.perf_counter() - begin
    summary.tracks = book.summary(prompt.classes)
    summary.error = source.error
    if summary.frames == 0 and summary.error is None:
        summary.error = f"{source.path}: no frames"
    done = summary.frames - start
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
        "frames_per_second": round(done / summary.seconds, 3) if summary.seconds > 0 else None,
    }
    import json

    atomic_write_text(root / SUMMARY, json.dumps(record, indent=1, allow_nan=False) + "\n")
    summary.files.append(root / SUMMARY)
    shutil.rmtree(work, ignore_errors=True)
    return summary
