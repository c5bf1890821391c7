"""``grounded granularity``: every mask level for a click or a box, drawn one colour per level."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from grounded.cli.common import add_overwrite_option
from grounded.core.errors import EXIT_OK, UserError
from grounded.tasks.granularity import ADAPTERS  # light: the task imports its models when it runs

__all__ = ["add_parser", "handler"]


def _pairs(text: str, n: int, what: str) -> list[float]:
    """``n`` comma-separated finite numbers; a box's corners must be ordered (x0 < x1, y0 < y1)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{what} must be {n} comma-separated numbers, got {text!r}")
    if n == 4 and not (values[0] < values[2] and values[1] < values[3]):
        raise argparse.ArgumentTypeError(
            f"{what} {text!r} must read X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1 (top-left, then bottom-right)"
        )
    return values


def add_parser(subparsers: Any) -> None:
    """Add ``grounded granularity``."""
    p = subparsers.add_parser(
        "granularity",
        help="all mask levels (part -> whole) for a click or a box",
        description="Decode every granularity level a SAM-family model gives for each --point or --box, ordered "
        "finest to coarsest, near-duplicates (IoU >= 0.9) merged, nesting checked (a finer level should lie "
        "inside the next: containment >= 0.9, violations reported). Writes NAME_levels.png (one colour per "
        "level, legend) and NAME_levels.json (levels with area, score, RLE mask, containment).",
    )
    p.add_argument("image", type=Path, help="the image")
    p.add_argument(
        "--point", action="append", default=[], metavar="X,Y", help="a click in pixels (repeatable)"
    )
    p.add_argument(
        "--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="a box in pixels (repeatable)"
    )
    p.add_argument(
        "--segmenter",
        default=None,
        help="SAM / HQ-SAM / SAM 2 hub id, folder or .pth (default facebook/sam-vit-base); for Semantic-SAM "
        "an official .pth (swint_only_sam_many2many.pth, swinl_only_sam_many2many.pth) or a converted folder",
    )
    p.add_argument("--adapter", choices=ADAPTERS, default="sam", help="segmenter family")
    p.add_argument(
        "--image-size", type=int, default=640, help="semantic_sam: short side the image is resized to (640)"
    )
    p.add_argument("--levels", default="all", help="all (default), part, whole, or level numbers such as 1,3")
    p.add_argument(
        "--everything",
        action="store_true",
        help="segment the whole image at one --level from a grid of clicks (no --point / --box)",
    )
    p.add_argument("--level", type=int, default=1, help="with --everything: the level (1 = finest)")
    p.add_argument(
        "--points-per-side", type=int, default=32, help="with --everything: grid size (default 32)"
    )
    p.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=0.88,
        help="with --everything: drop masks whose predicted IoU is below this (default 0.88)",
    )
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    add_overwrite_option(p)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.set_defaults(handler=handler)


def _levels_arg(text: str) -> str | list[int]:
    if text in ("all", "part", "whole"):
        return text
    try:
        numbers = [int(v) for v in text.split(",")]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise UserError(f"--levels must be all, part, whole or level numbers (from 1) like 1,3; got {text!r}")
    return numbers


def _segmenter(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "adapter": args.adapter,
        "model": args.segmenter,
        "image_size": args.image_size,
        "device": args.device,
    }


def _everything(args: argparse.Namespace) -> int:
    from grounded.tasks.granularity import everything_files

    if args.point or args.box:
        raise UserError("--everything uses a grid of clicks: give no --point / --box")
    if args.level < 1 or args.points_per_side < 1:
        raise UserError("--level and --points-per-side must be at least 1")
    det = everything_files(
        args.image,
        args.out,
        args.level,
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        overwrite=args.overwrite,
        **_segmenter(args),
    )
    print(f"grounded: {len(det)} mask(s) at level {args.level}", file=sys.stderr)
    return EXIT_OK


def handler(args: argparse.Namespace) -> int:
    """Run ``grounded granularity``; returns the exit code."""
    from grounded.tasks.granularity import level_files

    if args.everything:
        return _everything(args)
    try:
        points = [_pairs(t, 2, "--point") for t in args.point]
        boxes = [_pairs(t, 4, "--box") for t in args.box]
    except argparse.ArgumentTypeError as exc:
        raise UserError(str(exc)) from None
    results = level_files(
        args.image,
        args.out,
        points=points,
        boxes=boxes,
        levels=_levels_arg(args.levels),
        overwrite=args.overwrite,
        **_segmenter(args),
    )
    for i, r in enumerate(results):
        note = f"; nesting violated at levels {list(r.violations)}" if r.violations else ""
        print(f"grounded: prompt {i + 1}: {len(r)} level(s), areas {list(r.areas)}{note}", file=sys.stderr)
    return EXIT_OK
