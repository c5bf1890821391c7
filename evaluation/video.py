"""Tracking metrics of MOTS txt results with TrackEval (HOTA, MOTSA, IDF1): the reference implementation,
not re-derived here.

:func:`evaluate_mots` lays the ground truth and the result out the way TrackEval's MOTSChallenge loader
reads them (``GT/SEQ/gt/gt.txt``, ``TRACKERS/NAME/data/SEQ.txt``, sequence lengths given directly) in a
temporary folder and runs ``trackeval.Evaluator`` with the HOTA, CLEAR and Identity metrics. MOTSChallenge
evaluates the class ``pedestrian`` (class id 2 in the files; ``grounded track`` writes the prompt's
classes as 1, 2, ... so ``"car . pedestrian"`` matches), frames counted from 1.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

from grounded.core.errors import UserError

__all__ = ["evaluate_mots"]


def evaluate_mots(
    gt: str | Path, result: str | Path, frames: int, sequence: str = "video"
) -> dict[str, float]:
    """HOTA, DetA, AssA, MOTSA, IDF1 and IDSW (id switches) of ``result`` against ``gt`` (MOTS txt files
    of one sequence of ``frames`` frames), class pedestrian, as fractions in ``[0, 1]``."""
    try:
        import trackeval
    except ImportError:
        raise UserError("MOTS evaluation needs TrackEval: pip install trackeval") from None
    root = Path(tempfile.mkdtemp(prefix="grounded-trackeval-"))
    try:
        (root / "gt" / sequence / "gt").mkdir(parents=True)
        shutil.copyfile(gt, root / "gt" / sequence / "gt" / "gt.txt")
        (root / "trackers" / "grounded" / "data").mkdir(parents=True)
        shutil.copyfile(result, root / "trackers" / "grounded" / "data" / f"{sequence}.txt")
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
        data_config = trackeval.datasets.MOTSChallenge.get_default_dataset_config()
        data_config.update(
            {
                "GT_FOLDER": str(root / "gt"),
                "TRACKERS_FOLDER": str(root / "trackers"),
                "OUTPUT_FOLDER": str(root / "out"),
                "TRACKERS_TO_EVAL": ["grounded"],
                "SEQ_INFO": {sequence: int(frames)},
                "SKIP_SPLIT_FOL": True,
                "PRINT_CONFIG": False,
            }
        )
        metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(), trackeval.metrics.Identity()]
        with contextlib.redirect_stdout(io.StringIO()):
            results, _ = trackeval.Evaluator(eval_config).evaluate(
                [trackeval.datasets.MOTSChallenge(data_config)], metrics
            )
        scores = results["MOTSChallenge"]["grounded"]["COMBINED_SEQ"]["pedestrian"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "HOTA": float(scores["HOTA"]["HOTA"].mean()),
        "DetA": float(scores["HOTA"]["DetA"].mean()),
        "AssA": float(scores["HOTA"]["AssA"].mean()),
        "MOTSA": float(scores["CLEAR"]["MOTA"]),
        "IDF1": float(scores["Identity"]["IDF1"]),
        "IDSW": float(scores["CLEAR"]["IDSW"]),
    }
