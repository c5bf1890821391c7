"""Video metrics with TrackEval, the reference implementation (not re-derived here): HOTA, MOTSA and IDF1 of
MOTS txt results, and DAVIS 2017 J&F of indexed-PNG results.

MOTS (:func:`mots_scores`, :func:`evaluate_mots`): the ground truth and the results are laid out the way
TrackEval's ``MOTSChallenge`` loader reads them (``GT/SEQ/gt/gt.txt``, ``TRACKERS/NAME/data/SEQ.txt``,
sequence lengths given directly) in a temporary folder, and ``trackeval.Evaluator`` runs the HOTA, CLEAR and
Identity metrics. MOTSChallenge evaluates the class ``pedestrian`` (class id 2 in the files; class 10 marks
ignore regions; ``grounded track`` writes the prompt's classes as 1, 2, ... so ``"car . pedestrian"``
matches), frames counted from 1.

DAVIS (:func:`davis_scores`): the **semi-supervised** protocol of the official DAVIS 2017 evaluation
(``davisvideochallenge/davis2017-evaluation``, also what SAM 2 reports): the objects are the ids of the first
frame's annotation, result id *k* is scored against object *k* (the ids were given, so a swap is an error),
the first and the last frame are not scored, J (region IoU) and F (boundary F-measure) are averaged over the
frames of each object, then over all objects of all sequences; J&F is their mean. TrackEval's ``JAndF`` metric
computes J and F per frame exactly as that code does, but matches result ids to objects by an optimal
assignment (the *unsupervised* protocol); so each object is given to TrackEval's ``DAVIS`` loader as a
sequence of its own (ground truth: that object; result: the pixels labelled with its id), where the
assignment has one choice. Objects without any ground-truth pixel on the scored frames cannot be scored that
way (TrackEval gives NaN) and are listed instead.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grounded.core.errors import UserError
from grounded.evaluation.datasets import DatasetError

__all__ = ["DAVIS_FIELDS", "MOTS_FIELDS", "DavisScores", "davis_scores", "evaluate_mots", "mots_scores"]

#: the MOTS numbers reported, all fractions in [0, 1] but IDSW (a count)
MOTS_FIELDS = ("HOTA", "DetA", "AssA", "MOTSA", "IDF1", "IDSW")
#: the DAVIS numbers reported per object, sequence and overall (fractions in [0, 1])
DAVIS_FIELDS = ("J&F", "J", "F", "J-Recall", "F-Recall")
_TRACKER = "grounded"


def _trackeval() -> Any:
    try:
        import trackeval
    except ImportError:
        raise UserError("video evaluation needs TrackEval: pip install trackeval") from None
    return trackeval


def _evaluate(trackeval: Any, dataset: Any, metrics: list[Any], root: Path) -> dict[str, Any]:
    """``trackeval.Evaluator`` quietly on one dataset; its results for our tracker, by sequence."""
    eval_config = trackeval.Evaluator.get_default_eval_config()
    eval_config.update(
        {
            "PRINT_RESULTS": False,
            "PRINT_CONFIG": False,
            "TIME_PROGRESS": False,
            "OUTPUT_SUMMARY": False,
            "OUTPUT_DETAILED": False,
            "PLOT_CURVES": False,
            "LOG_ON_ERROR": str(root / "error_log.txt"),
        }
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            results, _ = trackeval.Evaluator(eval_config).evaluate([dataset], metrics)
    except trackeval.utils.TrackEvalException as exc:
        raise DatasetError(f"TrackEval: {' '.join(str(exc).split())}") from None
    return dict(results[dataset.get_name()][_TRACKER])


# ---------------------------------------------------------------------------- MOTS
def mots_scores(
    gt: Mapping[str, str | Path], results: Mapping[str, str | Path], frames: Mapping[str, int]
) -> dict[str, dict[str, float]]:
    """HOTA, DetA, AssA, MOTSA, IDF1 and IDSW of the MOTS txt ``results`` against ``gt`` (sequence name ->
    file, ``frames`` its length), class pedestrian: per sequence, and over all under ``"COMBINED_SEQ"``."""
    trackeval = _trackeval()
    if set(results) != set(gt) or set(frames) != set(gt):
        raise ValueError("gt, results and frames must name the same sequences")
    root = Path(tempfile.mkdtemp(prefix="grounded-trackeval-"))
    try:
        for seq in gt:
            (root / "gt" / seq / "gt").mkdir(parents=True)
            shutil.copyfile(gt[seq], root / "gt" / seq / "gt" / "gt.txt")
        (root / "trackers" / _TRACKER / "data").mkdir(parents=True)
        for seq, path in results.items():
            shutil.copyfile(path, root / "trackers" / _TRACKER / "data" / f"{seq}.txt")
        data_config = trackeval.datasets.MOTSChallenge.get_default_dataset_config()
        data_config.update(
            {
                "GT_FOLDER": str(root / "gt"),
                "TRACKERS_FOLDER": str(root / "trackers"),
                "OUTPUT_FOLDER": str(root / "out"),
                "TRACKERS_TO_EVAL": [_TRACKER],
                "SEQ_INFO": {seq: int(n) for seq, n in frames.items()},
                "SKIP_SPLIT_FOL": True,
                "PRINT_CONFIG": False,
            }
        )
        try:
            dataset = trackeval.datasets.MOTSChallenge(data_config)
        except trackeval.utils.TrackEvalException as exc:
            raise DatasetError(f"TrackEval: {exc}") from None
        quiet = {"THRESHOLD": 0.5, "PRINT_CONFIG": False}  # TrackEval's defaults, without printing them
        metrics = [
            trackeval.metrics.HOTA(),
            trackeval.metrics.CLEAR(quiet),
            trackeval.metrics.Identity(quiet),
        ]
        by_seq = _evaluate(trackeval, dataset, metrics, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {}
    for seq, classes in by_seq.items():
        scores = classes["pedestrian"]
        out[seq] = {
            "HOTA": float(scores["HOTA"]["HOTA"].mean()),
            "DetA": float(scores["HOTA"]["DetA"].mean()),
            "AssA": float(scores["HOTA"]["AssA"].mean()),
            "MOTSA": float(scores["CLEAR"]["MOTA"]),
            "IDF1": float(scores["Identity"]["IDF1"]),
            "IDSW": float(scores["CLEAR"]["IDSW"]),
        }
    return out


def evaluate_mots(
    gt: str | Path, result: str | Path, frames: int, sequence: str = "video"
) -> dict[str, float]:
    """HOTA, DetA, AssA, MOTSA, IDF1 and IDSW (id switches) of ``result`` against ``gt`` (MOTS txt files
    of one sequence of ``frames`` frames), class pedestrian, as fractions in ``[0, 1]``."""
    return mots_scores({sequence: gt}, {sequence: result}, {sequence: frames})["COMBINED_SEQ"]


# ---------------------------------------------------------------------------- DAVIS
@dataclass
class DavisScores:
    """J&F, J, F, J-Recall and F-Recall overall (mean over objects), per sequence (mean over its objects)
    and per object (``"SEQ_ID"``, as the official evaluation names them), and the objects not scored."""

    overall: dict[str, float]
    sequences: dict[str, dict[str, float]]
    objects: dict[str, dict[str, float]]
    not_scored: list[str] = field(default_factory=list)


def _write_binary_png(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8), mode="L").save(path, format="PNG", compress_level=1)


def davis_scores(
    sequences: Iterable[tuple[str, Sequence[int], Sequence[np.ndarray], Sequence[np.ndarray]]],
) -> DavisScores:
    """DAVIS 2017 semi-supervised J&F (see the module docstring).

    ``sequences`` yields, one sequence at a time, its name, its object ids, the ground-truth label images and
    the result label images ``(H, W)`` of all its frames (the first and last included; 0 background, object
    ids, 255 void in the ground truth).
    """
    trackeval = _trackeval()
    try:
        import cv2  # noqa: F401 - TrackEval's F measure dilates boundaries with OpenCV and a scikit-image disk
        import skimage.morphology  # noqa: F401
    except ImportError:
        raise UserError(
            "DAVIS J&F needs OpenCV and scikit-image: pip install 'grounded[video-eval]'"
        ) from None
    root = Path(tempfile.mkdtemp(prefix="grounded-trackeval-"))
    names: dict[str, tuple[str, int]] = {}
    lengths: dict[str, int] = {}
    order: list[str] = []
    not_scored: list[str] = []
    try:
        for seq, objects, labels, predicted in sequences:
            order.append(seq)
            if len(predicted) != len(labels):
                raise DatasetError(f"{seq}: {len(predicted)} result frame(s) for {len(labels)} frames")
            scored = range(1, len(labels) - 1)
            for oid in objects:
                key = f"{seq}_{oid}"
                if not any(np.any(labels[t] == oid) for t in scored):
                    not_scored.append(key)
                    continue
                names[key] = (seq, oid)
                lengths[key] = len(scored)
                gt_dir = root / "gt" / key
                tr_dir = root / "trackers" / _TRACKER / "data" / key
                gt_dir.mkdir(parents=True)
                tr_dir.mkdir(parents=True)
                for t in scored:
                    truth = np.where(labels[t] == 255, 255, labels[t] == oid)
                    _write_binary_png(gt_dir / f"{t:05d}.png", truth)
                    _write_binary_png(tr_dir / f"{t:05d}.png", predicted[t] == oid)
        if not names:
            raise DatasetError("no object has ground-truth pixels on the scored frames; nothing to score")
        data_config = trackeval.datasets.DAVIS.get_default_dataset_config()
        data_config.update(
            {
                "GT_FOLDER": str(root / "gt"),
                "TRACKERS_FOLDER": str(root / "trackers"),
                "OUTPUT_FOLDER": str(root / "out"),
                "TRACKERS_TO_EVAL": [_TRACKER],
                "SEQ_INFO": lengths,
                "PRINT_CONFIG": False,
            }
        )
        try:
            dataset = trackeval.datasets.DAVIS(data_config)
        except trackeval.utils.TrackEvalException as exc:
            raise DatasetError(f"TrackEval: {exc}") from None
        by_seq = _evaluate(trackeval, dataset, [trackeval.metrics.JAndF()], root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def pick(res: Mapping[str, Any]) -> dict[str, float]:
        return {
            "J&F": float(res["J&F"]),
            "J": float(res["J-Mean"]),
            "F": float(res["F-Mean"]),
            "J-Recall": float(res["J-Recall"]),
            "F-Recall": float(res["F-Recall"]),
        }

    per_object = {key: pick(by_seq[key]["general"]["JAndF"]) for key in names}
    per_sequence: dict[str, dict[str, float]] = {}
    for seq in order:
        keys = [k for k, (s, _) in names.items() if s == seq]
        if keys:
            per_sequence[seq] = {f: float(np.mean([per_object[k][f] for k in keys])) for f in DAVIS_FIELDS}
    overall = pick(by_seq["COMBINED_SEQ"]["general"]["JAndF"])
    return DavisScores(overall=overall, sequences=per_sequence, objects=per_object, not_scored=not_scored)
