"""``grounded run``: a YAML pipeline (bundled name or path) on image files."""

from __future__ import annotations

import argparse
from typing import Any

from grounded.cli.common import add_set_option, parse_settings, shared_params
from grounded.cli.segment import add_run_options, process

__all__ = ["add_parser", "handler"]


def add_parser(subparsers: Any) -> None:
    """Add ``grounded run``."""
    run = subparsers.add_parser(
        "run",
        help="run a YAML pipeline",
        description="Run a YAML pipeline (a bundled name such as grounded_hq_sam, or a path) on images.",
    )
    run.add_argument("pipeline", help="bundled pipeline name or YAML path")
    add_run_options(run)
    add_set_option(run, help="override a node parameter (YAML value), e.g. --set detector.box_threshold=0.3")
    run.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    """Run ``grounded run``; returns the exit code."""
    from grounded.api import build_pipeline

    overrides = parse_settings(args.settings)
    return process(
        args, lambda: build_pipeline(args.pipeline, overrides=overrides, shared=shared_params(args))
    )
