"""Running a tracker over a video dataset and writing its results in the files the metrics read.

DAVIS (:func:`predict_davis`, prompted video object segmentation): the tracker is given the first frame's
ground-truth masks (``tracker.add(0, {object id: mask})``) and follows them; the results are DAVIS indexed
PNGs (value = object id; where masks overlap the lower id wins), ``OUT/SEQ/FRAME.png``.

MOTS (:func:`predict_mots`, text-prompted tracking): the whole tracking job (:func:`grounded.tasks.track.track`:
detector on key frames, tracker between them, mask-IoU association) runs with a text prompt, one class per
evaluated class; the results are MOTS txt (``OUT/SEQ.txt``), prompt class *i* written as the dataset's class
id of evaluated class *i*.

Each sequence's results appear whole or not at all (a folder renamed into place, an atomic file).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grounded.adapters.video import Masks
from grounded.core.errors import UserError
from grounded.core.files import atomic_write_text
from grounded.core.prompts import Prompt
from grounded.core.video import open_video
from grounded.evaluation.datasets import DatasetError
from grounded.evaluation.video_data import DavisSequence, MotsSequence, read_label_png
from grounded.tasks.track import Tracking, track
from grounded.tasks.track_outputs import _indexed_png, label_image, mots_lines

__all__ = ["davis_labels", "predict_davis", "predict_mots"]

Progress = Callable[[int], None]


def davis_labels(masks: Masks, size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` object-id image of per-object masks: 0 background, the lower id where masks overlap."""
    labels = np.zeros(size, dtype=np.int64)
    for oid in sorted(masks, reverse=True):  # the lowest id is painted last
        labels[np.asarray(masks[oid], dtype=bool)] = oid
    return labels


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=desc, disable=not enabled or None, file=sys.stderr)


def _clean_up(out: Path, created: bool, partial: Path | None = None) -> None:
    """After a failed run: remove the unfinished sequence and, if this run made it and it is empty, ``out``."""
    if partial is not None and partial.exists():
        shutil.rmtree(partial, ignore_errors=True)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _replace_folder(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def predict_davis(
    sequences: Sequence[DavisSequence], tracking: Tracking, out: Path, *, progress: bool = True
) -> dict[str, Path]:
    """Follow each sequence's first-frame objects with ``tracking.tracker``; sequence -> results folder."""
    tracker = tracking.tracker
    if tracker.text_driven:
        raise UserError(
            f"{type(tracker).__name__} finds objects from text itself; DAVIS (prompted video object "
            "segmentation) needs a tracker that follows given masks (sam2_video)"
        )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    tmp: Path | None = None
    bar = _progress_bar(sum(s.frames for s in sequences), "davis", progress)
    try:
        for seq in sequences:
            source = open_video(seq.images[0].parent)
            if source.frame_count != seq.frames:
                raise DatasetError(
                    f"{seq.images[0].parent}: {source.frame_count} images for {seq.frames} frames"
                )
            first = read_label_png(seq.annotations[0])
            if first.shape != source.size:
                raise DatasetError(
                    f"{seq.annotations[0]}: {first.shape[1]}x{first.shape[0]} annotation for "
                    f"{source.size[1]}x{source.size[0]} frames"
                )
            tmp = out / f".{seq.name}.partial"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            tracker.start(source.size, Prompt.of("object"))
            for index, image in enumerate(source.frames()):
                masks = tracker.step(index, image)
                if index == 0:
                    masks = tracker.add(0, {oid: first == oid for oid in seq.objects})
                labels = davis_labels({k: v for k, v in masks.items() if k in seq.objects}, source.size)
                (tmp / f"{seq.annotations[index].stem}.png").write_bytes(_indexed_png(labels))
                bar.update(1)
            tracker.drop(seq.objects)
            _replace_folder(tmp, out / seq.name)
            written[seq.name] = out / seq.name
    except BaseException:
        _clean_up(out, created, tmp)
        raise
    finally:
        bar.close()
    return written


def predict_mots(
    sequences: Sequence[MotsSequence],
    tracking: Tracking,
    prompt: Prompt,
    class_ids: Sequence[int],
    out: Path,
    *,
    detect_every: int | None = None,
    max_lost: int | None = None,
    reverse: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Track ``prompt`` through each sequence and write MOTS txt; prompt class *i* is written as
    ``class_ids[i]``. Sequence -> results file. ``detect_every`` / ``max_lost``: as for
    :func:`~grounded.tasks.track.track` (defaults there)."""
    if len(class_ids) != len(prompt.classes):
        raise UserError(
            f"the prompt has {len(prompt.classes)} class(es) for {len(class_ids)} evaluated class(es)"
        )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    to_dataset: Mapping[str, str] = {str(i + 1): str(c) for i, c in enumerate(class_ids)}
    written: dict[str, Path] = {}
    bar = _progress_bar(sum(s.frames for s in sequences), "mots", progress)
    try:
        for seq in sequences:
            source = open_video(seq.images)
            lines: list[str] = []
            frames = 0
            for frame in track(
                source, prompt, tracking, detect_every=detect_every, max_lost=max_lost, reverse=reverse
            ):
                det = frame.detections
                for line in mots_lines(frame.index, det, label_image(det)):
                    fields = line.split(" ")
                    fields[2] = to_dataset[fields[2]]
                    lines.append(" ".join(fields))
                frames += 1
                bar.update(1)
            if frames != seq.frames:
                raise DatasetError(f"{seq.images}: read {frames} frame(s) of {seq.frames}")
            atomic_write_text(out / f"{seq.name}.txt", "".join(lines))
            written[seq.name] = out / f"{seq.name}.txt"
    except BaseException:
        _clean_up(out, created)
        raise
    finally:
        bar.close()
    return written
