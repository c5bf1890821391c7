"""``grounded convert-dataset``: a COCO dataset (or a run's ``coco.json``) rewritten as COCO, YOLO, VOC or Label
Studio tasks by the same writers as ``grounded annotate``; the job is :mod:`grounded.tasks.convert_dataset`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grounded.cli.common import add_dataset_options, dataset_formats
from grounded.core.errors import EXIT_OK, UserError

__all__ = ["add_parser", "handler"]


def add_parser(subparsers: Any) -> None:
    """Add ``grounded convert-dataset``."""
    p = subparsers.add_parser(
        "convert-dataset",
        help="rewrite a COCO dataset as COCO / YOLO / VOC / Label Studio (fixes older exports)",
        description="Read a COCO instances file (or a folder with annotations/instances_<subset>.json) and its "
        "images, and write each --to format into OUT/<format>/ with the layout and conventions of "
        "grounded annotate, then read each back to validate it (OUT/validation.json).",
    )
    p.add_argument("input", type=Path, help="a COCO .json, or a COCO dataset folder")
    p.add_argument(
        "--from", dest="source_format", choices=("coco",), default="coco", help="input format (coco)"
    )
    p.add_argument("--to", required=True, help="comma-separated: coco, yolo, voc, label-studio")
    p.add_argument("--out", "-o", type=Path, required=True, help="folder to write OUT/<format>/ into")
    p.add_argument(
        "--images",
        type=Path,
        help="folder the COCO file_names are relative to (default: images/<subset>/, images/, the file's folder)",
    )
    add_dataset_options(p)
    p.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    """Run ``grounded convert-dataset``."""
    from grounded.tasks.convert_dataset import convert_dataset

    formats = dataset_formats(args.to)
    if args.rle and args.polygons:
        raise UserError("--rle and --polygons are two ways to write COCO masks; give one")
    done = convert_dataset(args.input, args.out, formats, images=args.images, rle=args.rle, link=args.link)
    summary = ", ".join(
        f"{fmt}: {done.report[fmt]['instances']} instances"
        + (f", mask IoU >= {done.report[fmt]['min_iou']:.4f}" if "min_iou" in done.report[fmt] else ", exact")
        for fmt in formats
    )
    skipped = f"; {done.skipped} annotation(s) without a mask left out" if done.skipped else ""
    print(f"grounded: {done.images} image(s); {summary}{skipped} -> {args.out}", file=sys.stderr)
    print(json.dumps(done.report), file=sys.stderr)
    return EXIT_OK
