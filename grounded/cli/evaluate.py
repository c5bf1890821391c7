"""``grounded eval seginw`` and ``grounded eval coco``: zero-shot evaluation from the command line (``grounded
eval video``: :mod:`grounded.cli.evaluate_video`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from grounded.cli.common import (
    add_device_option,
    add_quiet_option,
    add_set_option,
    parse_settings,
    shared_params,
)
from grounded.cli.evaluate_video import add_parser as add_video_parser
from grounded.core.errors import EXIT_IMAGE_ERRORS, EXIT_OK, UserError

__all__ = ["add_parser", "handler"]

EXIT_INCOMPLETE = EXIT_IMAGE_ERRORS  # a dataset missing, or an image failed


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pipeline",
        default="grounded_sam",
        help="bundled pipeline name or YAML path (default: grounded_sam); its detector is put on the protocol",
    )
    p.add_argument("--out", "-o", type=Path, required=True, help="report folder (created if missing)")
    p.add_argument("--detector", help="detector hub id or local folder (replaces the pipeline's)")
    p.add_argument("--segmenter", help="segmenter hub id or local folder (replaces the pipeline's)")
    add_set_option(
        p, help="override a node parameter after the protocol (a deliberate deviation, shown in the report)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="images per pipeline call (default 4)")
    add_device_option(p)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None, help="numeric precision")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="prediction cache file (default: OUT/cache/predictions.sqlite); shared across runs and settings",
    )
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score cached predictions only, never run a model (images without them count as failed)",
    )
    scoring = p.add_argument_group("scoring (applied to cached predictions; the defaults are the protocol)")
    scoring.add_argument(
        "--mask-score",
        choices=("detector", "detector_x_mask", "mask"),
        default="detector",
        help="score of each mask: the box's detector score (protocol), times SAM's predicted IoU, or that IoU",
    )
    scoring.add_argument("--max-dets", type=int, default=None, help="keep the best N results per image")
    scoring.add_argument(
        "--score-threshold", type=float, default=None, help="drop results scoring at or below"
    )
    scoring.add_argument("--nms-threshold", type=float, default=None, help="class-aware NMS at this box IoU")
    add_quiet_option(p)


def add_parser(subparsers: Any) -> None:
    """Add ``eval`` with its ``seginw`` and ``coco`` subcommands."""
    ev = subparsers.add_parser(
        "eval",
        help="evaluation: SegInW (published protocol), any COCO-format dataset, video (DAVIS J&F, MOTS HOTA)",
        description="Zero-shot evaluation with the published SegInW protocol (top-100 (query, class) pairs, no "
        "threshold, no NMS, masks scored by their box's detector score, COCO AP). See evaluation/README.md.",
    )
    sub = ev.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    seginw = sub.add_parser(
        "seginw",
        help="the 25 SegInW datasets; writes report.md/json, a chart and seginw_NAME_val.json submissions",
        description="Evaluate on SegInW: DATA/NAME/valid/_annotations_min1cat.coco.json for each of the 25 "
        "datasets. Missing datasets are reported (exit code 1); the mean is then over the datasets found.",
    )
    seginw.add_argument("--data", type=Path, required=True, help="SegInW root folder (holds the 25 datasets)")
    seginw.add_argument(
        "--datasets",
        help="comma-separated subset of the 25 names (default: all; the rest are 'not requested')",
    )
    _common(seginw)
    seginw.set_defaults(handler=handler)
    coco = sub.add_parser(
        "coco",
        help="any COCO-format dataset: category names as prompts, box AP and mask AP",
        description="Evaluate on a COCO-format dataset with the same protocol: its category names are the prompt.",
    )
    coco.add_argument(
        "--images", type=Path, required=True, help="folder the file_name entries are relative to"
    )
    coco.add_argument("--annotations", type=Path, required=True, help="COCO annotation JSON")
    coco.add_argument("--name", help="dataset name in the report (default: the annotation file's stem)")
    _common(coco)
    coco.set_defaults(handler=handler)
    add_video_parser(sub)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    if args.detector is not None:
        overrides.setdefault("detector", {})["model"] = args.detector
    if args.segmenter is not None:
        overrides.setdefault("segmenter", {})["model"] = args.segmenter
    for node, params in parse_settings(args.settings).items():
        overrides.setdefault(node, {}).update(params)
    return overrides


def handler(args: argparse.Namespace) -> int:
    """Run ``grounded eval seginw|coco``; returns the exit code."""
    from grounded.evaluation.benchmarks import CACHE_FILE, evaluate_coco, evaluate_seginw
    from grounded.evaluation.datasets import DatasetError
    from grounded.evaluation.protocol import Scoring
    from grounded.evaluation.runner import EvaluationError, build_eval_pipeline

    overrides, shared = _overrides(args), shared_params(args)
    try:
        scoring = Scoring(
            mask_score=args.mask_score,
            max_dets=args.max_dets,
            score_threshold=args.score_threshold,
            nms_threshold=args.nms_threshold,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cache_file = args.cache or args.out / CACHE_FILE
    if args.rescore and not cache_file.is_file():
        raise UserError(f"--rescore: no prediction cache at {cache_file}; run once without --rescore first")
    pipeline, notes = build_eval_pipeline(args.pipeline, overrides=overrides, shared=shared)
    pipeline.validate()
    common: dict[str, Any] = {
        "scoring": scoring,
        "protocol_notes": notes,
        "cache_path": args.cache,
        "batch_size": args.batch_size or 4,
        "progress": not args.quiet,
        "cache_only": args.rescore,
    }
    try:
        if args.benchmark == "seginw":
            names = [n.strip() for n in args.datasets.split(",") if n.strip()] if args.datasets else None
            run = evaluate_seginw(args.data, pipeline, args.out, datasets=names, **common)
        else:
            run = evaluate_coco(args.annotations, args.images, pipeline, args.out, name=args.name, **common)
    except (DatasetError, EvaluationError) as exc:
        raise UserError(str(exc)) from None
    report, summary = run.report, run.report["summary"]
    metric = "mask_ap" if summary["mask_ap_mean"] is not None else "box_ap"
    headline = summary[f"{metric}_mean"]
    what = "SegInW datasets" if args.benchmark == "seginw" else "dataset"
    parts = [
        f"grounded eval: mean {'mask AP' if metric == 'mask_ap' else 'box AP'} "
        + ("n/a" if headline is None else f"{headline:.1f}")
        + (f" (median {summary[f'{metric}_median']:.1f})" if summary["evaluated"] > 1 else "")
        + f" over {summary['evaluated']} of {summary['expected']} {what}"
    ]
    runs = sum(r.images_run for r in run.results)
    cached = sum(r.images_cached for r in run.results)
    parts.append(f"{runs} image(s) run, {cached} from the cache")
    if run.missing:
        parts.append(f"{len(run.missing)} missing: {', '.join(run.missing)}")
    if run.failures:
        parts.append(f"{len(run.failures)} image(s) failed")
    print("; ".join(parts) + f" -> {args.out / 'report.md'}", file=sys.stderr)
    for deviation in report["protocol_deviations"]:
        print(f"grounded eval: warning: protocol deviation: {deviation}", file=sys.stderr)
    return EXIT_INCOMPLETE if run.missing or run.failures else EXIT_OK
