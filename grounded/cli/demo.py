"""``grounded demo``: segment three skimage photos end to end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from grounded.cli.common import add_quiet_option
from grounded.cli.segment import summarize

__all__ = ["add_parser", "handler"]


def add_parser(subparsers: Any) -> None:
    """Add ``grounded demo``."""
    demo = subparsers.add_parser(
        "demo",
        help="segment three skimage photos end to end",
        description="Write skimage.data photos (astronaut, coffee, chelsea) to OUT/inputs and run `segment` on them "
        "with the default hub models. Where those cannot be had (no network, nothing cached), tiny random-weight "
        "models are built in OUT/models instead: the files show the whole flow, the boxes and masks mean nothing.",
    )
    demo.add_argument(
        "--out", "-o", type=Path, default=Path("results"), help="output folder (default: results)"
    )
    demo.add_argument("--prompt", default="person . cup . cat . flag", help="text prompt")
    demo.add_argument(
        "--random-weights", action="store_true", help="use tiny random-weight models even if real ones exist"
    )
    add_quiet_option(demo)
    demo.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    """Segment the photos with the default models, or tiny random-weight ones where those are unavailable."""
    from grounded.api import build_pipeline
    from grounded.tasks.demo import DEFAULT_MODELS, default_models_missing, tiny_models, write_demo_images
    from grounded.tasks.segment_files import segment_files

    paths = write_demo_images(args.out / "inputs")
    overrides: dict[str, dict[str, Any]] = {}
    reason = default_models_missing(args.random_weights)
    if reason is None:
        print(f"grounded demo: using {' + '.join(DEFAULT_MODELS.values())}", file=sys.stderr)
    else:
        models = args.out / "models"
        print(
            f"grounded demo: real weights unavailable ({reason}); using tiny RANDOM-weight models in {models}: "
            "the output files show the flow, the boxes and masks are meaningless",
            file=sys.stderr,
        )
        overrides = tiny_models(models)
    pipeline = build_pipeline("grounded_sam", overrides=overrides)
    return summarize(segment_files(pipeline, paths, args.prompt, args.out, quiet=args.quiet), args.out)
