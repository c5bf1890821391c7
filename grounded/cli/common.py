"""What several commands share: the ``--device`` / ``--set`` / ``--quiet`` options and turning options into
pipeline parameters."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from grounded.core.errors import UserError

__all__ = [
    "DETECTOR_FLAGS",
    "add_dataset_options",
    "add_device_option",
    "add_overwrite_option",
    "add_quiet_option",
    "add_set_option",
    "dataset_formats",
    "params_from",
    "parse_settings",
    "shared_params",
]

#: option dest -> detector parameter; options a command does not have are skipped
DETECTOR_FLAGS = (
    ("detector", "model"),
    ("box_threshold", "box_threshold"),
    ("text_threshold", "text_threshold"),
    ("top_k", "top_k"),
    ("nms_threshold", "nms_threshold"),
)


def add_dataset_options(parser: Any) -> None:
    """``--rle`` and ``--link`` of the dataset writers (``annotate``, ``convert-dataset``)."""
    parser.add_argument(
        "--rle",
        action="store_true",
        help="COCO: pixel-exact RLE masks with iscrowd 1, as the COCO format defines RLE (training loaders then "
        "treat them as crowd regions); default: polygons with iscrowd 0, read by every COCO loader",
    )
    parser.add_argument(
        "--polygons",
        action="store_true",
        help="COCO: polygons (the default now; kept for older scripts)",
    )
    parser.add_argument(
        "--link",
        action="store_true",
        help="hard-link the images into the datasets instead of copying them (where the file system allows; "
        "images with an EXIF rotation are always written rotated)",
    )


def dataset_formats(text: str) -> list[str]:
    """The comma-separated ``--format`` list, checked against the dataset formats."""
    from grounded.tasks.datasets import FORMATS

    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got {text!r}")
    return list(dict.fromkeys(formats))


def add_device_option(parser: Any) -> None:
    """``--device`` (a parser or an argument group)."""
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")


def add_overwrite_option(parser: Any) -> None:
    """``--overwrite``: let a job replace existing files that are not its own results."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files that are not results of this job (other settings, or files grounded "
        "did not write); without it such a file is refused before any model is loaded, and inputs never are",
    )


def add_quiet_option(parser: Any, help: str = "no progress bar") -> None:
    """``--quiet`` / ``-q``."""
    parser.add_argument("--quiet", "-q", action="store_true", help=help)


def add_set_option(parser: Any, help: str) -> None:
    """``--set NODE.PARAM=VALUE`` (repeatable), parsed by :func:`parse_settings`."""
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="NODE.PARAM=VALUE", help=help
    )


def parse_settings(settings: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["detector.box_threshold=0.3", ...]`` as node -> params, each value read as YAML."""
    from grounded.core.safe_yaml import load_yaml

    out: dict[str, dict[str, Any]] = {}
    for item in settings:
        key, eq, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not eq or not dot or not node or not param:
            raise UserError(f"--set expects NODE.PARAM=VALUE, got {item!r}")
        out.setdefault(node, {})[param] = load_yaml(value, f"--set {key}")
    return out


def shared_params(args: argparse.Namespace) -> dict[str, Any]:
    """--device / --precision / --batch-size (those the command has and the user set), for every node that
    takes them."""
    shared: dict[str, Any] = {}
    if getattr(args, "device", None) is not None:
        shared["device"] = args.device
    if getattr(args, "precision", None) is not None:
        shared["precision"] = args.precision
    if getattr(args, "batch_size", None) is not None:
        if args.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        shared["batch_size"] = args.batch_size
    return shared


def params_from(args: argparse.Namespace, flags: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``{param: value}`` of each ``(option dest, param)`` in ``flags`` whose option was given."""
    return {param: getattr(args, dest) for dest, param in flags if getattr(args, dest, None) is not None}
