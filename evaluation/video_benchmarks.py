"""``grounded eval video``: run a tracker over a DAVIS 2017 or MOTSChallenge folder (or take results already
written), score them with TrackEval and write the report.

- :func:`evaluate_davis` — prompted video object segmentation (semi-supervised DAVIS 2017): J&F, J, F.
- :func:`evaluate_mots_dataset` — text-prompted multi-object tracking and segmentation: HOTA, MOTSA, IDF1.

With ``tracking`` the models run and write their results into ``OUT/predictions`` (DAVIS PNGs or MOTS txt);
with ``predictions`` a folder of results in the same layout is scored and no model runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grounded.core.errors import UserError
from grounded.core.prompts import Prompt
from grounded.evaluation.datasets import DatasetError
from grounded.evaluation.report import now_utc
from grounded.evaluation.video import MOTS_FIELDS, davis_scores, mots_scores
from grounded.evaluation.video_data import (
    MOTS_CLASSES,
    DavisSequence,
    find_davis,
    find_mots,
    read_label_png,
)
from grounded.evaluation.video_report import write_video_report
from grounded.evaluation.video_runner import predict_davis, predict_mots
from grounded.tasks.track import Tracking, resolve_options

__all__ = ["DAVIS_PROTOCOL", "PREDICTIONS", "evaluate_davis", "evaluate_mots_dataset", "mots_protocol"]

#: where the results of a run go, inside the report folder
PREDICTIONS = "predictions"


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _base(benchmark: str, title: str, data: Path, protocol: list[str]) -> dict[str, Any]:
    from grounded.core.version import __version__

    return {
        "title": title,
        "benchmark": benchmark,
        "data": str(data),
        "protocol": protocol,
        "created": now_utc(),
        "grounded_version": __version__,
    }


def _run_info(ran: bool, predictions: Path, frames: int, seconds: float) -> dict[str, Any]:
    return {
        "ran_models": ran,
        "predictions": str(predictions),
        "frames_run": frames if ran else 0,
        "seconds": round(seconds, 3) if ran else 0.0,
        "frames_per_second": round(frames / seconds, 3) if ran and seconds > 0 else None,
    }


def _results_folder(predictions: str | Path) -> Path:
    path = Path(predictions)
    if not path.is_dir():
        raise DatasetError(f"--predictions {path}: no such folder")
    return path


# ---------------------------------------------------------------------------- DAVIS
DAVIS_PROTOCOL = [
    "DAVIS 2017 semi-supervised (prompted video object segmentation), as the official davis2017-evaluation "
    "and SAM 2 score it: the tracker is given each object's ground-truth mask on the first frame "
    "(`tracker.add(0, masks)`) and follows it alone; result id k is scored against object k.",
    "The objects are the ids on the first frame's annotation; the first and the last frame are not scored.",
    "J = region IoU, F = boundary F-measure (boundary tolerance 0.008 of the image diagonal), per frame by "
    "TrackEval's JAndF; mean over frames per object, then over all objects (J&F = (J + F) / 2); recall = "
    "share of frames above 0.5. Each object is scored as its own TrackEval sequence, so TrackEval's id "
    "assignment (the unsupervised protocol) has one choice. Void pixels (255) are not scored (TrackEval).",
    "Where result masks overlap, the lower id is kept (one id per pixel, as in DAVIS PNGs).",
]


def _davis_inputs(
    sequences: Sequence[DavisSequence], results: Path
) -> Iterator[tuple[str, Sequence[int], list[np.ndarray], list[np.ndarray]]]:
    """Each sequence's name, objects, annotations and results (one PNG per frame named as its annotation;
    the first and the last frame, which are not scored, may be missing)."""
    for seq in sequences:
        gt = [read_label_png(p) for p in seq.annotations]
        predicted = []
        for index, (annotation, truth) in enumerate(zip(seq.annotations, gt, strict=True)):
            path = results / seq.name / f"{annotation.stem}.png"
            if not path.is_file():
                if index in (0, seq.frames - 1):
                    predicted.append(np.zeros(truth.shape, np.uint8))
                    continue
                raise DatasetError(
                    f"{path}: missing (results need one PNG per frame, named as the annotations)"
                )
            labels = read_label_png(path)
            if labels.shape != truth.shape:
                raise DatasetError(
                    f"{path}: {labels.shape[1]}x{labels.shape[0]} result for a "
                    f"{truth.shape[1]}x{truth.shape[0]} annotation"
                )
            extra = sorted(set(np.unique(labels).tolist()) - {0, *seq.objects})
            if extra:
                raise DatasetError(
                    f"{path}: ids {extra} that are not objects of {seq.name} (first-frame ids {list(seq.objects)})"
                )
            predicted.append(labels)
        yield seq.name, seq.objects, gt, predicted


def evaluate_davis(
    data: str | Path,
    out: str | Path,
    *,
    tracking: Tracking | None = None,
    predictions: str | Path | None = None,
    split: str = "val",
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
    progress: bool = True,
) -> dict[str, Any]:
    """J&F of ``tracking`` (run here) or of the ``predictions`` folder on a DAVIS 2017 folder; writes
    ``report.md`` / ``report.json`` into ``out`` and returns the report."""
    if (tracking is None) == (predictions is None):
        raise ValueError("give tracking (to run) or predictions (to score), not both")
    data, out = Path(data), Path(out)
    seqs = find_davis(data, split=split, sequences=sequences, resolution=resolution)
    frames = sum(s.frames for s in seqs)
    start = time.perf_counter()
    if tracking is not None:
        results = out / PREDICTIONS
        predict_davis(seqs, tracking, results, progress=progress)
    else:
        assert predictions is not None
        results = _results_folder(predictions)
    seconds = time.perf_counter() - start
    scores = davis_scores(_davis_inputs(seqs, results))
    counted = {s.name: sum(1 for k in scores.objects if k.rsplit("_", 1)[0] == s.name) for s in seqs}
    report = _base(
        "davis",
        f"grounded eval video: DAVIS 2017 {'/'.join(sequences) if sequences else split} "
        f"({resolution}), semi-supervised J&F",
        data,
        DAVIS_PROTOCOL,
    )
    report.update(
        {
            "split": None if sequences else split,
            "resolution": resolution,
            "summary": {
                **{k: _finite(v) for k, v in scores.overall.items()},
                "sequences": len(scores.sequences),
                "objects": len(scores.objects),
                "frames": frames,
            },
            "sequences": [
                {
                    "name": s.name,
                    "frames": s.frames,
                    "objects": counted[s.name],
                    **{k: _finite(v) for k, v in scores.sequences.get(s.name, {}).items()},
                }
                for s in seqs
            ],
            "objects": {k: {f: _finite(v) for f, v in d.items()} for k, d in scores.objects.items()},
            "not_scored": scores.not_scored,
            "pipeline": tracking.settings if tracking is not None else None,
            "run": _run_info(tracking is not None, results, frames, seconds),
        }
    )
    write_video_report(report, out)
    return report


# ---------------------------------------------------------------------------- MOTS
def mots_protocol(prompt: Prompt | None, class_ids: Sequence[int]) -> list[str]:
    """The protocol lines of a MOTS report (``prompt``: the tracker's, ``None`` for given results)."""
    if prompt is None:
        first = (
            "Results read from --predictions (MOTS txt, class 2 = pedestrian); how they were made is not "
            "recorded here."
        )
    else:
        mapping = ", ".join(f"'{c}' -> class {i}" for c, i in zip(prompt.classes, class_ids, strict=True))
        first = (
            "Text-prompted multi-object tracking and segmentation on MOTSChallenge: the tracking job "
            "(`grounded track`: detector on key frames, video tracker between them, mask-IoU association) gets only "
            f"the prompt {str(prompt)!r} ({mapping}); no ground truth is given to it."
        )
    return [
        first,
        "HOTA, DetA, AssA (mean over the IoU thresholds 0.05..0.95), MOTSA (CLEAR MOTA on masks, IoU 0.5), "
        "IDF1 and IDSW by TrackEval's MOTSChallenge loader, class pedestrian; results overlapping an ignore "
        "region (class 10) by more than half and matched to nothing are removed (TrackEval).",
        "Where result masks overlap, the higher score keeps the pixel (MOTS masks do not overlap).",
    ]


def evaluate_mots_dataset(
    data: str | Path,
    out: str | Path,
    *,
    tracking: Tracking | None = None,
    predictions: str | Path | None = None,
    prompt: str | None = None,
    sequences: Sequence[str] | None = None,
    detect_every: int | None = None,
    max_lost: int | None = None,
    reverse: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """HOTA, MOTSA and IDF1 of ``tracking`` (run here with ``prompt``, default the dataset's class names) or
    of the ``predictions`` folder (``SEQ.txt``) on a MOTSChallenge folder; writes the report into ``out``.
    ``detect_every`` / ``max_lost`` default as :func:`~grounded.tasks.track.resolve_options` says."""
    if (tracking is None) == (predictions is None):
        raise ValueError("give tracking (to run) or predictions (to score), not both")
    if tracking is not None:  # the values in use (recorded below); refused here, before any run
        detect_every, max_lost = resolve_options(tracking.tracker, detect_every, max_lost, reverse)
    data, out = Path(data), Path(out)
    seqs = find_mots(data, sequences=sequences)
    class_ids = list(MOTS_CLASSES)
    text = Prompt.of(prompt) if prompt else Prompt.of(list(MOTS_CLASSES.values()))
    if len(text.classes) != len(class_ids):
        raise UserError(
            f"--prompt {prompt!r} has {len(text.classes)} class(es); MOTSChallenge evaluates "
            f"{len(class_ids)} ({', '.join(MOTS_CLASSES.values())}): give one text per evaluated class"
        )
    frames = sum(s.frames for s in seqs)
    start = time.perf_counter()
    if tracking is not None:
        results = out / PREDICTIONS
        files = predict_mots(
            seqs,
            tracking,
            text,
            class_ids,
            results,
            detect_every=detect_every,
            max_lost=max_lost,
            reverse=reverse,
            progress=progress,
        )
    else:
        assert predictions is not None
        results = _results_folder(predictions)
        files = {s.name: results / f"{s.name}.txt" for s in seqs}
        for path in files.values():
            if not path.is_file():
                raise DatasetError(f"{path}: missing (results need one MOTS txt per sequence, SEQ.txt)")
    seconds = time.perf_counter() - start
    scores = mots_scores({s.name: s.gt for s in seqs}, files, {s.name: s.frames for s in seqs})
    combined = scores["COMBINED_SEQ"]
    report = _base(
        "mots",
        f"grounded eval video: MOTSChallenge {data.name}, text-prompted HOTA",
        data,
        mots_protocol(text if tracking is not None else None, class_ids),
    )
    report.update(
        {
            "prompt": str(text) if tracking is not None else None,
            "classes": {str(i): name for i, name in MOTS_CLASSES.items()},
            "summary": {
                **{k: _finite(combined[k]) for k in MOTS_FIELDS},
                "sequences": len(seqs),
                "frames": frames,
            },
            "sequences": [
                {"name": s.name, "frames": s.frames, **{k: _finite(scores[s.name][k]) for k in MOTS_FIELDS}}
                for s in seqs
            ],
            "pipeline": tracking.settings if tracking is not None else None,
            "settings": {"detect_every": detect_every, "max_lost": max_lost, "reverse": reverse}
            if tracking is not None
            else None,
            "run": _run_info(tracking is not None, results, frames, seconds),
        }
    )
    write_video_report(report, out)
    return report
