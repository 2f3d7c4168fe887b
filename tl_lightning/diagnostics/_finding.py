"""One finding of a diagnostic check: which check, and the sentence a user reads."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Finding"]


@dataclass(frozen=True)
class Finding:
    """A problem a check found.

    Attributes:
        check: Name of the check (``"normalization"``, ``"bgr"``, ``"unknown_tokens"``, ...), the
            name ``InputCheck(ignore=[...])`` takes.
        message: What was expected, what was observed, the likely cause and the fix.
    """

    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"
