"""The two evaluations: SegInW (25 datasets, the published zero-shot protocol) and any COCO-format dataset."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grounded.engine import Pipeline
from grounded.evaluation.cache import PredictionCache
from grounded.evaluation.datasets import SEGINW_DATASETS, CocoDataset, find_seginw, load_coco_dataset
from grounded.evaluation.protocol import (
    EvalProtocol,
    Scoring,
    pipeline_fingerprint,
    protocol_deviations,
)
from grounded.evaluation.report import load_seginw_reference, now_utc, summarize, write_report
from grounded.evaluation.runner import DatasetResult, predict_dataset, score_dataset

__all__ = ["CACHE_FILE", "EvalRun", "evaluate_coco", "evaluate_seginw", "submission_name"]

CACHE_FILE = Path("cache") / "predictions.sqlite"
SUBMISSION_DIR = "submission"


def submission_name(dataset: str) -> str:
    """The X-Decoder / EvalAI SegInW submission file of a dataset: ``seginw_{name}_val.json``."""
    return f"seginw_{dataset}_val.json"


@dataclass
class EvalRun:
    """What an evaluation produced: the report document, per-dataset results and the files written."""

    report: dict[str, Any]
    results: list[DatasetResult]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        return list(self.report.get("missing_datasets", []))

    @property
    def failures(self) -> list[str]:
        return [f for r in self.results for f in r.failures]


def _write_results(path: Path, results: list[dict[str, Any]]) -> None:
    from grounded.core.files import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, separators=(",", ":")) + "\n")


def _run_dataset(
    dataset: CocoDataset,
    pipeline: Pipeline,
    cache: PredictionCache,
    fingerprint: str,
    scoring: Scoring,
    batch_size: int,
    progress: bool,
    cache_only: bool,
) -> DatasetResult:
    predictions = predict_dataset(
        dataset,
        pipeline,
        cache,
        batch_size=batch_size,
        progress=progress,
        cache_only=cache_only,
        fingerprint=fingerprint,
    )
    return score_dataset(predictions, scoring)


def _base_report(
    benchmark: str,
    title: str,
    pipeline: Pipeline,
    fingerprint: str,
    protocol: EvalProtocol,
    scoring: Scoring,
    notes: Sequence[str],
) -> dict[str, Any]:
    from grounded.core.version import __version__

    return {
        "benchmark": benchmark,
        "title": title,
        "created": now_utc(),
        "grounded_version": __version__,
        "pipeline": pipeline.to_dict(),
        "pipeline_fingerprint": fingerprint,
        "protocol": protocol.params(),
        "protocol_deviations": protocol_deviations(pipeline, protocol),
        "protocol_notes": list(notes),
        "scoring": scoring.params(),
        "scoring_is_protocol": scoring.is_protocol,
    }


def evaluate_seginw(
    root: str | Path,
    pipeline: Pipeline,
    out: str | Path,
    *,
    datasets: Sequence[str] | None = None,
    scoring: Scoring | None = None,
    protocol: EvalProtocol | None = None,
    protocol_notes: Sequence[str] = (),
    cache_path: str | Path | None = None,
    batch_size: int = 4,
    progress: bool = True,
    cache_only: bool = False,
    on_dataset: Callable[[DatasetResult], None] | None = None,
) -> EvalRun:
    """Evaluate ``pipeline`` zero-shot on the SegInW datasets under ``root`` and write the report to ``out``.

    ``root`` holds ``NAME/valid/_annotations_min1cat.coco.json`` for the 25 datasets (or those in
    ``datasets``); the ones not found are reported as missing. Writes ``out/report.{md,json}``, the chart, and
    ``out/submission/seginw_NAME_val.json`` per dataset (mask results in the X-Decoder / EvalAI format).
    Pipeline outputs are cached in ``out/cache/predictions.sqlite`` (or ``cache_path``): re-running resumes,
    re-scoring with another ``scoring`` re-runs no model, and ``cache_only`` guarantees that.
    """
    out = Path(out)
    scoring = scoring or Scoring()
    protocol = protocol or EvalProtocol()
    layout = find_seginw(root, datasets)
    reference = load_seginw_reference()
    fingerprint = pipeline_fingerprint(pipeline)
    results: list[DatasetResult] = []
    submissions: list[str] = []
    with PredictionCache(cache_path or out / CACHE_FILE) as cache:
        for name, annotation_file in layout.found:
            dataset = load_coco_dataset(annotation_file, annotation_file.parent, name=name)
            result = _run_dataset(
                dataset, pipeline, cache, fingerprint, scoring, batch_size, progress, cache_only
            )
            _write_results(out / SUBMISSION_DIR / submission_name(name), result.segm_results)
            submissions.append(f"{SUBMISSION_DIR}/{submission_name(name)}")
            results.append(result)
            if on_dataset is not None:
                on_dataset(result)
    report = _base_report(
        "seginw", "SegInW zero-shot evaluation", pipeline, fingerprint, protocol, scoring, protocol_notes
    )
    rows = [r.to_json() for r in results]
    for row in rows:
        row["reference"] = reference.values.get(row["name"], {})
    requested = list(datasets) if datasets is not None else list(SEGINW_DATASETS)
    report.update(
        {
            "data_root": str(Path(root).resolve()),
            "dataset_order": [n for n in SEGINW_DATASETS if n in requested],
            "datasets": rows,
            "missing_datasets": list(layout.missing),
            "not_requested": [n for n in SEGINW_DATASETS if n not in requested],
            "ignored_folders": list(layout.ignored),
            "summary": summarize(rows, expected=len(requested), reference=reference),
            "reference_source": list(reference.source),
            "reference_values": reference.values,
            "files": {"submission": submissions},
        }
    )
    files = write_report(report, out)
    return EvalRun(report=report, results=results, files=files)


def evaluate_coco(
    annotations: str | Path,
    images: str | Path,
    pipeline: Pipeline,
    out: str | Path,
    *,
    name: str | None = None,
    scoring: Scoring | None = None,
    protocol: EvalProtocol | None = None,
    protocol_notes: Sequence[str] = (),
    cache_path: str | Path | None = None,
    batch_size: int = 4,
    progress: bool = True,
    cache_only: bool = False,
) -> EvalRun:
    """Evaluate ``pipeline`` on one COCO-format dataset with the same protocol: its category names are the
    prompt; box AP and (when the ground truth has masks) mask AP. Writes the report and
    ``out/predictions/NAME_bbox.json`` / ``NAME_segm.json`` (COCO results)."""
    out = Path(out)
    scoring = scoring or Scoring()
    protocol = protocol or EvalProtocol()
    dataset = load_coco_dataset(annotations, images, name=name)
    fingerprint = pipeline_fingerprint(pipeline)
    with PredictionCache(cache_path or out / CACHE_FILE) as cache:
        result = _run_dataset(
            dataset, pipeline, cache, fingerprint, scoring, batch_size, progress, cache_only
        )
    written = [f"predictions/{dataset.name}_bbox.json"]
    _write_results(out / written[0], result.bbox_results)
    if result.mask is not None:
        written.append(f"predictions/{dataset.name}_segm.json")
        _write_results(out / written[1], result.segm_results)
    report = _base_report(
        "coco",
        f"{dataset.name}: zero-shot evaluation",
        pipeline,
        fingerprint,
        protocol,
        scoring,
        protocol_notes,
    )
    rows = [result.to_json()]
    report.update(
        {
            "annotation_file": str(dataset.annotation_file.resolve()),
            "image_dir": str(dataset.image_dir.resolve()),
            "datasets": rows,
            "summary": summarize(rows, expected=1),
            "files": {"predictions": written},
        }
    )
    files = write_report(report, out)
    return EvalRun(report=report, results=[result], files=files)
