"""Checks of parameter values, each raising ``ValueError`` with one line that names the parameter."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["at_least", "batches", "finite", "in_unit_interval", "one_of", "optional_in_unit_interval"]

T = TypeVar("T")


def _numbers(values: dict[str, Any]) -> None:
    """Each value must be a real number (not a bool, a string or NaN): NaN fails every range check."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
            raise ValueError(f"{name} must be a number, got {value!r}")


def finite(**values: float) -> None:
    """Each named value must be a finite number (a logit threshold, say: any real value but NaN and inf)."""
    _numbers(values)
    for name, value in values.items():
        if math.isinf(value):
            raise ValueError(f"{name} must be finite, got {value!r}")


def at_least(minimum: float, **values: float) -> None:
    """Each named value must be a number ``>= minimum`` (the message names them all, as one rule)."""
    _numbers(values)
    if any(value < minimum for value in values.values()):
        raise ValueError(f"{' and '.join(values)} must be at least {minimum:g}")


def in_unit_interval(**values: float) -> None:
    """Each named value must be a number in [0, 1] (the message names them all, as one rule)."""
    _numbers(values)
    if any(not 0.0 <= value <= 1.0 for value in values.values()):
        raise ValueError(f"{' and '.join(values)} must lie in [0, 1]")


def optional_in_unit_interval(**values: float | None) -> None:
    """Each named value must be ``None`` (off) or a number in [0, 1]."""
    in_unit_interval(**{name: value for name, value in values.items() if value is not None})


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
