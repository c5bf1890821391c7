"""The ``grounded`` command: the top parser, dispatch and one-line error reporting.

Each command is a module of this package (see :data:`COMMAND_MODULES`) with ``add_parser(subparsers)``, which
sets ``handler=<function(args) -> int>`` as a parser default; the handler validates the options, calls a job
in :mod:`grounded.tasks` (or :mod:`grounded.evaluation`) and prints. Those modules import only ``argparse``
and light helpers at the top, so ``grounded --help`` and ``grounded COMMAND --help`` start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from grounded.core.errors import EXIT_IMAGE_ERRORS, EXIT_OK, EXIT_USAGE, UserError

__all__ = [
    "COMMAND_MODULES",
    "EXIT_IMAGE_ERRORS",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "command_names",
    "main",
]

#: The modules that add the subcommands, in the order ``grounded --help`` lists them. Each defines
#: ``add_parser(subparsers) -> None`` and sets ``handler=<function(args) -> int>`` as a parser default; errors
#: it raises as :class:`CliError` (or the library's own error types) are printed as one line with exit code 2.
COMMAND_MODULES: list[str] = [
    "grounded.cli.segment",
    "grounded.cli.run",
    "grounded.cli.adapters",
    "grounded.cli.convert",
    "grounded.cli.demo",
    "grounded.cli.bench",
    "grounded.cli.evaluate",
    "grounded.cli.edit",
    "grounded.cli.granularity",
    "grounded.cli.annotate",
    "grounded.cli.serve",
    "grounded.cli.track",
    "grounded.cli.label_studio",
    "grounded.cli.convert_dataset",
]

#: An error reported as one line, without a traceback (exit code 2); the tasks raise it as ``UserError``.
CliError = UserError


def _add_commands(subparsers: Any) -> None:
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grounded", description="Open-vocabulary grounding: words in, boxes and pixel-exact masks out."
    )
    _add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def command_names() -> list[str]:
    """The subcommands of ``grounded``, as ``grounded --help`` lists them."""
    subparsers = argparse.ArgumentParser().add_subparsers()
    _add_commands(subparsers)
    return list(subparsers.choices)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``grounded`` command; returns the exit code."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="grounded: %(message)s")
    from grounded.runtime.memory import reuse_freed_memory
    from grounded.tasks.errors import user_errors

    errors = user_errors()
    # one block for the whole job: pages stay mapped between images (bench sets it per configuration)
    memory = contextlib.nullcontext() if args.command == "bench" else reuse_freed_memory()
    try:
        with memory:
            return int(args.handler(args))
    except errors as exc:
        print(f"grounded: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("grounded: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
