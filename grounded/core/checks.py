"""Checks of parameter values, each raising ``ValueError`` with one line that names the parameter."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["at_least", "batches", "in_unit_interval", "one_of"]

T = TypeVar("T")


def at_least(minimum: float, **values: float) -> None:
    """Each named value must be ``>= minimum`` (the message names them all, as one rule)."""
    if any(value < minimum for value in values.values()):
        raise ValueError(f"{' and '.join(values)} must be at least {minimum:g}")


def in_unit_interval(**values: float) -> None:
    """Each named value must lie in [0, 1] (the message names them all, as one rule)."""
    if any(not 0.0 <= value <= 1.0 for value in values.values()):
        raise ValueError(f"{' and '.join(values)} must lie in [0, 1]")


def one_of(name: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(
            f"{name} must be {', '.join(map(repr, choices[:-1]))} or {choices[-1]!r}, got {value!r}"
        )


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of ``size`` (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
