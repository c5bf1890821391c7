"""``grounded segment``: text-prompted segmentation of image files (Grounding DINO -> SAM)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grounded.cli.common import (
    DETECTOR_FLAGS,
    add_device_option,
    add_overwrite_option,
    add_quiet_option,
    params_from,
    shared_params,
)
from grounded.core.errors import EXIT_IMAGE_ERRORS, EXIT_OK

if TYPE_CHECKING:
    from grounded.tasks.segment_files import SegmentSummary

__all__ = ["add_parser", "add_run_options", "handler", "process", "summarize"]


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options ``segment`` and ``run`` share: images, prompt, outputs, batching, device."""
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, TIFF, ...)")
    p.add_argument("--prompt", "-p", required=True, help='classes separated by " . ", e.g. "dog . red car"')
    p.add_argument(
        "--out",
        "-o",
        type=Path,
        required=True,
        help="output folder (created if missing; refused before any model is loaded when it is not a writable "
        "folder). Files there are replaced only when they are results of the same settings (see --overwrite)",
    )
    p.add_argument(
        "--format",
        choices=("files", "coco"),
        default="files",
        help="files: NAME.json, NAME.png (overlay), NAME_labels.png (uint16 instance ids) per image; "
        "coco: one coco.json (images, categories, annotations with RLE masks) for the whole run: the run's "
        "results, naming the images where they are; grounded convert-dataset OUT/coco.json --images DIR "
        "--to coco lays it out as a dataset",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per model pass (default: adapters' own)"
    )
    add_device_option(p)
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default=None,
        help="numeric precision (auto: bf16 where the hardware computes it natively, else fp32)",
    )
    add_quiet_option(p)
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="resume an interrupted run: skip images whose NAME.json (written last) is already in --out; "
        "refused when those results were made with other settings (prompt, pipeline, models, thresholds)",
    )
    add_overwrite_option(p)


def add_parser(subparsers: Any) -> None:
    """Add ``grounded segment``."""
    seg = subparsers.add_parser(
        "segment",
        help="text-prompted segmentation (Grounding DINO -> SAM)",
        description="Detect the prompt's classes with Grounding DINO and segment each box with SAM / HQ-SAM. "
        "Outputs are written atomically; a bad image is reported by name and the others still complete "
        "(exit code 1 at the end).",
    )
    add_run_options(seg)
    seg.add_argument(
        "--pipeline",
        default="grounded_sam",
        help="bundled pipeline name or YAML path (default: grounded_sam)",
    )
    seg.add_argument(
        "--detector", help="detector hub id or local folder (default: IDEA-Research/grounding-dino-tiny)"
    )
    seg.add_argument(
        "--segmenter", help="SAM / HQ-SAM hub id or local folder (default: facebook/sam-vit-base)"
    )
    seg.add_argument("--box-threshold", type=float, help="minimum class score of a box (default 0.35)")
    seg.add_argument(
        "--text-threshold", type=float, help="token score delimiting the matched phrase (default 0.25)"
    )
    seg.add_argument("--top-k", type=int, help="at most this many detections per image (default 100)")
    seg.add_argument("--nms-threshold", type=float, help="IoU of class-aware NMS (default 0.8)")
    seg.add_argument("--no-nms", action="store_true", help="disable NMS")
    seg.add_argument(
        "--multi-label", action="store_true", help="score every (box, class) pair, not the best class"
    )
    seg.add_argument("--multimask", action="store_true", help="3 masks per box, keep the best predicted IoU")
    seg.add_argument("--hq-token-only", action="store_true", help="HQ-SAM: use the HQ mask alone")
    seg.add_argument(
        "--granularity",
        choices=("best", "part", "whole"),
        help="which of SAM's masks a box keeps: best predicted IoU (default), the finest, or the coarsest",
    )
    seg.set_defaults(handler=handler)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    det = params_from(args, DETECTOR_FLAGS)
    seg = params_from(args, (("segmenter", "model"), ("granularity", "granularity")))
    if args.no_nms:
        det["nms_threshold"] = None
    if args.multi_label:
        det["multi_label"] = True
    if args.multimask:
        seg["multimask_output"] = True
    if args.hq_token_only:
        seg["hq_token_only"] = True
    return {k: v for k, v in (("detector", det), ("segmenter", seg)) if v}


def summarize(summary: SegmentSummary, out: Path) -> int:
    """Print the one-line summary of a run; returns the exit code (1 when an image failed)."""
    print(
        f"grounded: {summary.processed} image(s) processed, {summary.detections} detection(s), "
        f"{len(summary.failures)} failed"
        + (f", {summary.skipped} skipped (already done)" if summary.skipped else "")
        + f" -> {out}",
        file=sys.stderr,
    )
    return EXIT_IMAGE_ERRORS if summary.failures else EXIT_OK


def process(args: argparse.Namespace, build: Callable[[], Any]) -> int:
    """Prepare ``--out``, then run the pipeline that ``build`` makes on the files that the
    :func:`add_run_options` options name; returns the exit code."""
    from grounded.core.files import OutputFolder
    from grounded.tasks.segment_files import segment_files

    with OutputFolder(args.out) as out:  # an unusable --out is refused before any model is loaded
        summary = segment_files(
            build(),
            args.images,
            args.prompt,
            out,
            format=args.format,
            batch_size=args.batch_size,
            quiet=args.quiet,
            skip_existing=args.skip_existing,
            overwrite=args.overwrite,
        )
    return summarize(summary, args.out)


def handler(args: argparse.Namespace) -> int:
    """Run ``grounded segment``; returns the exit code."""
    from grounded.api import build_pipeline

    overrides = _overrides(args)
    return process(
        args, lambda: build_pipeline(args.pipeline, overrides=overrides, shared=shared_params(args))
    )
