"""Exceptions raised by tl_lightning.

Every error derives from :class:`TLError`, so ``except TLError`` catches anything the library
raises on purpose. Each subclass also derives from the builtin a user would expect
(``ValueError``, ``KeyError``, ``RuntimeError``), so existing ``except ValueError`` code keeps
working. Messages name the bad value, the valid choices and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "TLError",
    "ConfigurationError",
    "UnknownNameError",
    "WeightsUnavailableError",
    "LayerGroupError",
    "DataError",
    "CheckpointError",
    "NonFiniteError",
    "ExportError",
    "closest_matches",
]


class TLError(Exception):
    """Base class of every error raised by tl_lightning."""


class ConfigurationError(TLError, ValueError):
    """An argument or config value is invalid (out of range, wrong type, inconsistent)."""


class UnknownNameError(ConfigurationError):
    """A name (backbone, layer group, column, option) is not one of the known choices."""


class WeightsUnavailableError(TLError, RuntimeError):
    """Pretrained weights were asked for and cannot be had. Never silently replaced by random init."""


class LayerGroupError(TLError, ValueError):
    """Layer groups break the adapter contract (overlap, missing parameters, bad order)."""


class DataError(TLError, ValueError):
    """Input data is unusable: unreadable file, missing column, empty class, unknown label."""


class CheckpointError(TLError, ValueError):
    """A checkpoint is missing, truncated, not a Lightning checkpoint, or does not fit the model."""


class NonFiniteError(TLError, FloatingPointError):
    """Training produced a NaN / inf loss or weights (the step and batch are named)."""


class ExportError(TLError, RuntimeError):
    """An exported model cannot be written, or loaded back it does not reproduce the module's outputs."""


def closest_matches(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` of ``choices`` closest to ``name`` (for "did you mean" messages)."""
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not matches:
        lowered = name.lower()
        matches = [c for c in choices if lowered in c.lower()][:n]
    return matches


def did_you_mean(name: str, choices: Iterable[str], n: int = 5) -> str:
    """Format a ``"; did you mean 'a', 'b'?"`` suffix, or ``""`` when nothing is close."""
    matches = closest_matches(name, choices, n=n)
    if not matches:
        return ""
    return "; did you mean " + ", ".join(repr(m) for m in matches) + "?"
