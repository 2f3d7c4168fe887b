"""The scores a ranking can hold, their display names, and the cost budget of a ranking."""

from __future__ import annotations

__all__ = ["SCORE_NAMES", "SCORE_LABELS", "COST_BUDGET"]

SCORE_NAMES: tuple[str, ...] = ("logme", "leep", "nce", "hscore", "linear_probe")
"""Every score :func:`rank_candidates` can compute; higher is better for each."""

SCORE_LABELS: dict[str, str] = {
    "logme": "LogME",
    "leep": "LEEP",
    "nce": "NCE",
    "hscore": "H-score",
    "linear_probe": "linear probe acc",
}
COST_BUDGET = 0.05
"""Most a ranking may cost, as a share of the estimated cost of fine-tuning every candidate."""
