"""Zero-shot evaluation (SegInW, COCO-format datasets); importable as ``grounded.evaluation``.

The published SegInW protocol (``evaluation/README.md`` gives every setting and its source) applied to any
pipeline::

    from grounded.evaluation import build_eval_pipeline, evaluate_seginw

    pipeline, notes = build_eval_pipeline("grounded_sam", overrides={"detector": {"model": "IDEA-Research/grounding-dino-base"}})
    run = evaluate_seginw("data/seginw", pipeline, "report/", protocol_notes=notes)
    run.report["summary"]["mask_ap_mean"]

Or ``grounded eval seginw --data data/seginw --pipeline grounded_sam --out report/``.
"""

from grounded.evaluation.benchmarks import EvalRun, evaluate_coco, evaluate_seginw, submission_name
from grounded.evaluation.cache import PredictionCache
from grounded.evaluation.datasets import (
    SEGINW_ANNOTATION,
    SEGINW_DATASETS,
    CocoDataset,
    DatasetError,
    find_seginw,
    load_coco_dataset,
)
from grounded.evaluation.metrics import CocoScores, coco_scores
from grounded.evaluation.protocol import (
    EvalProtocol,
    Scoring,
    pipeline_fingerprint,
    protocol_deviations,
    protocol_overrides,
)
from grounded.evaluation.report import load_seginw_reference
from grounded.evaluation.runner import (
    DatasetPredictions,
    DatasetResult,
    EvaluationError,
    build_eval_pipeline,
    predict_dataset,
    score_dataset,
    to_coco_results,
)
from grounded.evaluation.video import DavisScores, davis_scores, evaluate_mots, mots_scores
from grounded.evaluation.video_benchmarks import evaluate_davis, evaluate_mots_dataset

__all__ = [
    "SEGINW_ANNOTATION",
    "SEGINW_DATASETS",
    "CocoDataset",
    "CocoScores",
    "DatasetError",
    "DatasetPredictions",
    "DatasetResult",
    "DavisScores",
    "EvalProtocol",
    "EvalRun",
    "EvaluationError",
    "PredictionCache",
    "Scoring",
    "build_eval_pipeline",
    "coco_scores",
    "davis_scores",
    "evaluate_coco",
    "evaluate_davis",
    "evaluate_mots",
    "evaluate_mots_dataset",
    "evaluate_seginw",
    "find_seginw",
    "load_coco_dataset",
    "load_seginw_reference",
    "mots_scores",
    "pipeline_fingerprint",
    "predict_dataset",
    "protocol_deviations",
    "protocol_overrides",
    "score_dataset",
    "submission_name",
    "to_coco_results",
]
