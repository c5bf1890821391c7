"""``grounded adapters``: the registered adapters and their ports."""

from __future__ import annotations

import argparse
from typing import Any

from grounded.core.errors import EXIT_OK

__all__ = ["add_parser", "handler"]


def add_parser(subparsers: Any) -> None:
    """Add ``grounded adapters``."""
    subparsers.add_parser("adapters", help="list registered adapters and their ports").set_defaults(
        handler=handler
    )


def handler(args: argparse.Namespace) -> int:
    """Print each adapter's name, class, inputs and outputs."""
    from grounded.engine import available_adapters, input_ports, output_ports

    for name, cls in available_adapters().items():
        ins = ", ".join(p.describe() for p in input_ports(cls).values())
        outs = ", ".join(p.describe() for p in output_ports(cls).values())
        print(f"{name:16s} {cls.__module__}.{cls.__name__}\n    inputs:  {ins}\n    outputs: {outs}")
    return EXIT_OK
