"""Does the ranking match reality? Kendall's rank correlation between a score and measured accuracies.

The benchmark for a transferability score: fine-tune some candidates for real, then compare the
order of their accuracies with the order of the score (You et al. and Nguyen et al. report
Kendall's tau, or its weighted variant, for exactly this). ``tau = 1``: same order; ``0``:
unrelated; ``-1``: reversed.

This is Kendall's tau-b, which corrects for ties in either list:
``(concordant - discordant) / sqrt((P - ties_a) (P - ties_b))`` over all ``P = m (m - 1) / 2``
pairs; it equals ``scipy.stats.kendalltau`` (tested) without needing scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from tl_lightning._checks import check_choice, check_number
from tl_lightning.errors import DataError
from tl_lightning.transferability.ranking import Ranking

__all__ = ["kendall_tau", "kendall_tau_b"]


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two equally long 1-D sequences (O(m^2); m is a handful of candidates)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise DataError(
            f"kendall_tau_b needs two 1-D sequences of the same length >= 2, got {a.shape} and {b.shape}"
        )
    i, j = np.triu_indices(len(a), k=1)
    da = np.sign(a[i] - a[j])
    db = np.sign(b[i] - b[j])
    pairs = len(i)
    denominator = math.sqrt(float(pairs - (da == 0).sum()) * float(pairs - (db == 0).sum()))
    if denominator == 0:
        raise DataError("Kendall's tau is undefined when all values of one list are equal")
    return float((da * db).sum() / denominator)


def kendall_tau(
    ranking: Ranking, reference_scores: Mapping[str, float], *, score: str | None = None
) -> float:
    """Kendall's tau-b between a ranking's score and reference values (e.g. fine-tuned accuracies).

    Args:
        ranking: The result of :func:`rank_candidates`.
        reference_scores: ``{candidate name: measured value}`` (higher is better), for at least
            two of the ranking's candidates; candidates of the ranking not listed here are not
            compared.
        score: The ranking's score to compare (default: its primary score).

    Raises:
        DataError: A reference name not in the ranking, fewer than 2 candidates, a candidate
            without that score (LEEP / NCE without a source classifier), constant values.

    Example:
        >>> # ranking = rank_candidates(...); accuracies measured by fine-tuning each candidate
        >>> # kendall_tau(ranking, {"timm:resnet50": 0.91, "timm:vit_small_patch16_224": 0.93})
    """
    score = check_choice("score", ranking.primary if score is None else score, ranking.scores)
    if not isinstance(reference_scores, Mapping):
        raise DataError(
            f"reference_scores must map candidate names to values, got {type(reference_scores).__name__}"
        )
    unknown = [name for name in reference_scores if name not in ranking.names()]
    if unknown:
        raise DataError(
            f"reference_scores name candidates not in the ranking: {unknown}; ranked: {ranking.names()}"
        )
    if len(reference_scores) < 2:
        raise DataError(f"Kendall's tau needs at least 2 candidates, got {len(reference_scores)}")
    ours, theirs = [], []
    for name, value in reference_scores.items():
        mine = ranking[name].scores[score]
        if mine is None:
            raise DataError(
                f"candidate {name!r} has no {score} score (no source classifier); compare another score"
            )
        ours.append(mine)
        theirs.append(check_number(f"reference_scores[{name!r}]", value))
    return kendall_tau_b(np.array(ours), np.array(theirs))
