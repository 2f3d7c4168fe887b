"""Argument checks shared by every public entry point, so a bad value reads the same everywhere.

Each check raises :class:`~tl_lightning.errors.ConfigurationError` naming the argument, the bad
value and what is valid, and returns the value (converted to ``float`` / ``int``) so callers
can write ``self.lr = check_number("lr", lr, low=0, low_open=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from tl_lightning.errors import ConfigurationError, UnknownNameError, did_you_mean

__all__ = ["check_number", "check_int", "check_choice", "check_fraction"]


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "a finite number"


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite float within the bounds, or a ConfigurationError.

    Example:
        >>> check_number("lr", 1e-3, low=0, low_open=True)
        0.001
        >>> check_number("lr", float("nan"), low=0, low_open=True)
        Traceback (most recent call last):
        ...
        tl_lightning.errors.ConfigurationError: lr must be a finite number > 0, got nan
    """
    expected = _range_text(low, high, low_open, high_open)
    suffix = f"; {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a finite number" if expected == "a finite number" else f"a finite number {expected}"
        raise ConfigurationError(f"{name} must be {kind}, got {value!r} ({type(value).__name__}){suffix}")
    v = float(value)
    bad = not math.isfinite(v)
    if not bad and low is not None:
        bad = v <= low if low_open else v < low
    if not bad and high is not None:
        bad = v >= high if high_open else v > high
    if bad:
        kind = "a finite number" if expected == "a finite number" else f"a finite number {expected}"
        raise ConfigurationError(f"{name} must be {kind}, got {value!r}{suffix}")
    return v


def check_fraction(name: str, value: Any, *, allow_one: bool = False, hint: str = "") -> float:
    """``value`` in ``[0, 1)`` (``[0, 1]`` with ``allow_one``)."""
    return check_number(name, value, low=0.0, high=1.0, high_open=not allow_one, hint=hint)


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """``value`` as an int within ``[low, high]`` (bools and floats with a fraction refused).

    Example:
        >>> check_int("batch_size", 32, low=1)
        32
        >>> check_int("batch_size", 0, low=1)
        Traceback (most recent call last):
        ...
        tl_lightning.errors.ConfigurationError: batch_size must be an integer >= 1, got 0
    """
    expected = "an integer" + (
        f" in [{low}, {high}]" if low is not None and high is not None else f" >= {low}" if low is not None else ""
    )
    expected += f" <= {high}" if high is not None and low is None else ""
    suffix = f"; {hint}" if hint else ""
    ok_type = isinstance(value, int) and not isinstance(value, bool)
    if not ok_type and isinstance(value, float) and value.is_integer():
        value, ok_type = int(value), True
    if not ok_type or (low is not None and value < low) or (high is not None and value > high):
        raise ConfigurationError(f"{name} must be {expected}, got {value!r}{suffix}")
    return int(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``, else an UnknownNameError listing them.

    Example:
        >>> check_choice("task", "multilabel", ["multiclass", "multilabel"])
        'multilabel'
    """
    options = list(choices)
    if value not in options:
        raise UnknownNameError(f"{name} must be one of {options}, got {value!r}{did_you_mean(str(value), options)}")
    return value
