"""Rank candidate backbones by transferability scores computed on their (cached) features.

:func:`rank_candidates` takes, for each candidate, the features of the target training split
(and optionally the source classifier's outputs, validation features and timings), runs every
asked-for estimator, and returns a :class:`Ranking`: one row per candidate with every score, its
rank by the primary score and the linear-probe accuracy, plus the cost of the ranking next to
an estimate of fine-tuning every candidate. ``Ranking.to_markdown()``, ``to_json()`` and
``plot(path)`` write the report.

Why LogME is the default primary score: it needs only features (LEEP and NCE need a source
classifier, which self-supervised and many text encoders do not have, so they cannot rank every
candidate); it is a per-sample log evidence, in which the Bayesian prior accounts for the
feature size, where the raw H-score drifts with ``d / n`` unless shrunk (Ibrahim et al. 2022);
You et al. (ICML 2021) report a higher rank correlation (weighted Kendall tau) with fine-tuned
accuracy for LogME than for LEEP and NCE on most of their classification benchmarks; and it
costs one eigendecomposition, far less than the linear probe. No score wins everywhere
(Agostinelli et al., "How stable are transferability metrics evaluations?", ECCV 2022, show
rankings flip with the benchmark set-up), which is why the table shows all of them and
``primary=`` picks another (``"linear_probe"`` measures the feature-extraction outcome itself,
at the highest cost and with the noise of a small validation split).

The cost budget: ``tl-rank`` must cost under :data:`COST_BUDGET` (5%) of fine-tuning every
candidate; :attr:`RankingCost.fraction` and :attr:`RankingCost.within_budget` say where a
ranking stands (the estimate is a lower bound, see :mod:`tl_lightning.transferability.cost`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_lightning._checks import check_choice, check_int, check_number
from tl_lightning.errors import ConfigurationError, DataError, TLError
from tl_lightning.transferability._inputs import _to_numpy
from tl_lightning.transferability._scores import COST_BUDGET, SCORE_LABELS, SCORE_NAMES
from tl_lightning.transferability.cost import fine_tune_cost_estimate
from tl_lightning.transferability.hscore import check_shrinkage, h_score
from tl_lightning.transferability.leep import leep
from tl_lightning.transferability.linear_probe import (
    DEFAULT_L2_GRID,
    LinearProbeResult,
    check_l2_grid,
    check_val_fraction,
    linear_probe,
)
from tl_lightning.transferability.logme import logme
from tl_lightning.transferability.nce import nce

__all__ = [
    "COST_BUDGET",
    "SCORE_NAMES",
    "SCORE_LABELS",
    "CandidateFeatures",
    "CandidateScores",
    "Ranking",
    "RankingCost",
    "rank_candidates",
]

_NEEDS_SOURCE = frozenset({"leep", "nce"})


@dataclass(frozen=True)
class CandidateFeatures:
    """What :func:`rank_candidates` needs of one candidate backbone.

    Attributes:
        train_features: ``(n, d)`` features of the target training split.
        train_labels: ``(n,)`` its labels (the same for every candidate).
        source_probs: ``(n, Z)`` softmax outputs of the candidate's source (pretraining)
            classifier on the same samples, for LEEP and NCE; ``None`` when it has none.
        val_features: Optional ``(m, d)`` validation features for the linear probe (without
            them the probe holds out part of the training split).
        val_labels: ``(m,)`` labels of ``val_features``.
        feature_seconds: Seconds this run spent obtaining the features (extraction, or a
            cache read), counted in the ranking's cost.
        forward_seconds_per_batch: Measured seconds of one eval-mode forward batch, for the
            fine-tuning estimate (:func:`fine_tune_cost_estimate`); ``None`` when unknown.
        batch_size: The batch size of that measurement.
    """

    train_features: Any
    train_labels: Any
    source_probs: Any = None
    val_features: Any = None
    val_labels: Any = None
    feature_seconds: float = 0.0
    forward_seconds_per_batch: float | None = None
    batch_size: int | None = None


@dataclass(frozen=True)
class CandidateScores:
    """One row of a :class:`Ranking`.

    Attributes:
        name: The candidate's name (e.g. ``"timm:resnet50"``).
        rank: 1 for the best primary score.
        scores: Every computed score by name; ``None`` for LEEP / NCE without a source classifier.
        linear_probe: Details of the probe (chosen L2, split sizes), when it ran.
        n_train: Training samples.
        feature_dim: Feature size ``d``.
        num_classes: Target classes.
        seconds: ``"features"`` (from the input) and the wall time of each computed score.
        fine_tune_seconds: Estimated seconds of fine-tuning this candidate, when its forward
            time is known.
    """

    name: str
    rank: int
    scores: dict[str, float | None]
    linear_probe: LinearProbeResult | None
    n_train: int
    feature_dim: int
    num_classes: int
    seconds: dict[str, float]
    fine_tune_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        """The row as a plain, JSON-serialisable dict."""
        probe = None
        if self.linear_probe is not None:
            p = self.linear_probe
            probe = {
                "accuracy": p.accuracy,
                "l2": p.l2,
                "accuracy_per_l2": {f"{k:g}": v for k, v in p.accuracy_per_l2.items()},
                "n_fit": p.n_fit,
                "n_val": p.n_val,
                "held_out": p.held_out,
            }
        return {
            "name": self.name,
            "rank": self.rank,
            "scores": dict(self.scores),
            "linear_probe": probe,
            "n_train": self.n_train,
            "feature_dim": self.feature_dim,
            "num_classes": self.num_classes,
            "seconds": dict(self.seconds),
            "fine_tune_seconds_estimate": self.fine_tune_seconds,
        }


@dataclass(frozen=True)
class RankingCost:
    """What the ranking cost, next to what fine-tuning every candidate would.

    Attributes:
        seconds: This ranking: every candidate's ``feature_seconds`` plus the scoring time.
        feature_seconds: The features' part of ``seconds``.
        fine_tune_seconds: Estimated seconds of fine-tuning every candidate once for
            ``fine_tune_epochs`` (a lower bound, see :mod:`tl_lightning.transferability.cost`);
            ``None`` unless every candidate has a forward timing.
        fine_tune_epochs: Epochs the estimate assumes.
    """

    seconds: float
    feature_seconds: float
    fine_tune_seconds: float | None
    fine_tune_epochs: int

    @property
    def fraction(self) -> float | None:
        """``seconds / fine_tune_seconds`` (the issue's budget: under 0.05), or ``None``."""
        if not self.fine_tune_seconds:
            return None
        return self.seconds / self.fine_tune_seconds

    @property
    def within_budget(self) -> bool | None:
        """``fraction < COST_BUDGET``, or ``None`` without a fine-tuning estimate."""
        fraction = self.fraction
        return None if fraction is None else fraction < COST_BUDGET

    def to_json(self) -> dict[str, Any]:
        """Plain dict, ``fraction``, ``budget`` and ``within_budget`` included."""
        return {
            "seconds": self.seconds,
            "feature_seconds": self.feature_seconds,
            "fine_tune_seconds_estimate": self.fine_tune_seconds,
            "fine_tune_epochs": self.fine_tune_epochs,
            "fraction": self.fraction,
            "budget": COST_BUDGET,
            "within_budget": self.within_budget,
        }


@dataclass(frozen=True)
class Ranking:
    """Candidates ordered by a primary score; see :func:`rank_candidates`.

    Attributes:
        rows: One :class:`CandidateScores` per candidate, best first.
        primary: The score that orders them.
        scores: The scores computed, in column order.
        cost: The ranking's cost and the fine-tuning estimate.
        notes: Things a reader of the table should know (missing scores, ties).
    """

    rows: tuple[CandidateScores, ...]
    primary: str
    scores: tuple[str, ...]
    cost: RankingCost
    notes: tuple[str, ...] = field(default_factory=tuple)

    def names(self) -> list[str]:
        """Candidate names, best first."""
        return [r.name for r in self.rows]

    def __getitem__(self, name: str) -> CandidateScores:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no candidate {name!r} in this ranking; candidates: {self.names()}")

    def __iter__(self) -> Iterator[CandidateScores]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_json(self) -> dict[str, Any]:
        """The whole ranking as a plain dict (``json.dumps`` it as is)."""
        return {
            "primary": self.primary,
            "scores": list(self.scores),
            "score_labels": {s: SCORE_LABELS[s] for s in self.scores},
            "higher_is_better": True,
            "candidates": [r.to_json() for r in self.rows],
            "cost": self.cost.to_json(),
            "notes": list(self.notes),
        }

    def to_markdown(self) -> str:
        """A markdown table (one row per candidate, best first) followed by notes and the cost."""
        from tl_lightning.transferability._report import ranking_markdown

        return ranking_markdown(self)

    def plot(self, path: str | Path) -> Path:
        """Write one PNG with a bar chart per score (candidates in rank order) to ``path``.

        Uses matplotlib's Agg canvas directly: no window, no pyplot state.
        """
        from tl_lightning.transferability._report import ranking_plot

        return ranking_plot(self, Path(path))


def _check_candidates(results: Mapping[str, CandidateFeatures]) -> None:
    if not isinstance(results, Mapping) or not results:
        raise ConfigurationError(
            "results must be a non-empty mapping {candidate name: CandidateFeatures}, "
            f"got {type(results).__name__} {results!r:.60}"
        )
    reference: tuple[str, np.ndarray] | None = None
    for name, cand in results.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"candidate names must be non-empty strings, got {name!r}")
        if not isinstance(cand, CandidateFeatures):
            raise ConfigurationError(
                f"candidate {name!r} must be a CandidateFeatures, got {type(cand).__name__}; "
                "wrap its arrays: CandidateFeatures(train_features=..., train_labels=...)"
            )
        if (cand.forward_seconds_per_batch is None) != (cand.batch_size is None):
            raise ConfigurationError(
                f"candidate {name!r}: give forward_seconds_per_batch and batch_size together, or neither"
            )
        labels = _to_numpy(cand.train_labels, f"candidate {name!r} train_labels")
        if reference is None:
            reference = (name, labels)
        elif labels.shape != reference[1].shape or not np.array_equal(labels, reference[1]):
            raise DataError(
                f"candidates {reference[0]!r} and {name!r} have different training labels "
                f"({len(reference[1])} vs {len(labels)} entries, or a different order); rank every "
                "candidate on the same split, in the same sample order"
            )


def _score_one(
    name: str,
    cand: CandidateFeatures,
    scores: Sequence[str],
    *,
    hscore_shrinkage: str | float | None,
    val_fraction: float,
    l2_grid: Sequence[float],
    seed: int,
) -> tuple[dict[str, float | None], dict[str, float], LinearProbeResult | None]:
    values: dict[str, float | None] = {}
    seconds: dict[str, float] = {}
    probe: LinearProbeResult | None = None
    for score in scores:
        if score in _NEEDS_SOURCE and cand.source_probs is None:
            values[score] = None
            continue
        start = time.perf_counter()
        try:
            if score == "logme":
                values[score] = logme(cand.train_features, cand.train_labels)
            elif score == "leep":
                values[score] = leep(cand.source_probs, cand.train_labels)
            elif score == "nce":
                values[score] = nce(cand.source_probs, cand.train_labels)
            elif score == "hscore":
                values[score] = h_score(cand.train_features, cand.train_labels, shrinkage=hscore_shrinkage)
            else:
                probe = linear_probe(
                    cand.train_features,
                    cand.train_labels,
                    val_features=cand.val_features,
                    val_labels=cand.val_labels,
                    val_fraction=val_fraction,
                    l2_grid=l2_grid,
                    seed=seed,
                )
                values[score] = probe.accuracy
        except TLError as err:
            # Name the candidate: with ten backbones, "features has NaN" alone is not actionable.
            raise type(err)(f"candidate {name!r}, {SCORE_LABELS[score]}: {err}") from err
        seconds[score] = time.perf_counter() - start
    return values, seconds, probe


def rank_candidates(
    results: Mapping[str, CandidateFeatures],
    *,
    primary: str = "logme",
    scores: Sequence[str] = SCORE_NAMES,
    fine_tune_epochs: int = 10,
    hscore_shrinkage: str | float | None = "ledoit-wolf",
    val_fraction: float = 0.2,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    seed: int = 0,
) -> Ranking:
    """Score every candidate and rank them by ``primary`` (higher is better for every score).

    Args:
        results: ``{candidate name: CandidateFeatures}``, all on the same training split.
        primary: The score that orders the table (default LogME, see the module docstring).
        scores: The scores to compute, a subset of :data:`SCORE_NAMES`; LEEP and NCE are
            left empty (``None``) for candidates without ``source_probs``.
        fine_tune_epochs: Epochs assumed by the fine-tuning estimate.
        hscore_shrinkage: Passed to :func:`h_score` (``"ledoit-wolf"``, a number or ``None``).
        val_fraction: Held-out share for the linear probe when a candidate has no
            validation features.
        l2_grid: L2 strengths the linear probe tries.
        seed: Seed of the linear probe's held-out split (the same split for every candidate).

    Returns:
        The :class:`Ranking`. Ties in the primary score keep the order of ``results``.

    Raises:
        ConfigurationError: Unknown scores, ``primary`` not among them, LEEP / NCE as primary
            while a candidate has no source classifier, bad options.
        DataError: Candidates on different labels, or bad features (the message names the
            candidate and the score).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 200)
        >>> good = CandidateFeatures(rng.normal(size=(200, 8)) + 2 * y[:, None], y)
        >>> bad = CandidateFeatures(rng.normal(size=(200, 8)), y)
        >>> rank_candidates({"bad": bad, "good": good}, scores=["logme", "hscore"]).names()
        ['good', 'bad']
    """
    if isinstance(scores, str) or not isinstance(scores, Sequence) or not scores:
        raise ConfigurationError(
            f"scores must be a non-empty list of names from {list(SCORE_NAMES)}, got {scores!r}"
        )
    scores = tuple(check_choice("scores", s, SCORE_NAMES) for s in scores)
    if len(set(scores)) != len(scores):
        raise ConfigurationError(f"scores lists a name twice: {list(scores)}")
    primary = check_choice("primary", primary, SCORE_NAMES)
    if primary not in scores:
        raise ConfigurationError(
            f"primary={primary!r} is not among scores={list(scores)}; add it or pick one of them"
        )
    fine_tune_epochs = check_int("fine_tune_epochs", fine_tune_epochs, low=1)
    hscore_shrinkage = check_shrinkage(hscore_shrinkage, "hscore_shrinkage")
    val_fraction = check_val_fraction(val_fraction)
    l2_grid = check_l2_grid(l2_grid)
    seed = check_int("seed", seed, low=0)
    _check_candidates(results)
    if primary in _NEEDS_SOURCE:
        missing = [name for name, cand in results.items() if cand.source_probs is None]
        if missing:
            raise ConfigurationError(
                f"primary={primary!r} needs every candidate's source classifier outputs (source_probs); "
                f"{missing} have none. Rank by 'logme', 'hscore' or 'linear_probe' instead"
            )

    unsorted: list[
        tuple[str, dict[str, float | None], dict[str, float], LinearProbeResult | None, float | None]
    ] = []
    shapes: dict[str, tuple[int, int, int]] = {}
    for name, cand in results.items():
        feature_seconds = check_number(f"candidate {name!r} feature_seconds", cand.feature_seconds, low=0.0)
        values, seconds, probe = _score_one(
            name,
            cand,
            scores,
            hscore_shrinkage=hscore_shrinkage,
            val_fraction=val_fraction,
            l2_grid=l2_grid,
            seed=seed,
        )
        features = _to_numpy(cand.train_features, "train_features")
        n, d = features.shape if features.ndim == 2 else (len(features), 0)
        num_classes = len(np.unique(_to_numpy(cand.train_labels, "train_labels")))
        shapes[name] = (n, d, num_classes)
        fine_tune = None
        if cand.forward_seconds_per_batch is not None:
            n_val = 0 if cand.val_features is None else len(_to_numpy(cand.val_features, "val_features"))
            fine_tune = fine_tune_cost_estimate(
                n,
                fine_tune_epochs,
                cand.forward_seconds_per_batch,
                batch_size=cand.batch_size,  # type: ignore[arg-type]  # checked together above
                n_val=n_val,
            )
        unsorted.append((name, values, {"features": feature_seconds, **seconds}, probe, fine_tune))

    # Stable sort: ties keep the caller's order.
    order = sorted(range(len(unsorted)), key=lambda i: -unsorted[i][1][primary])  # type: ignore[operator]
    rows = []
    for rank, i in enumerate(order, start=1):
        name, values, seconds, probe, fine_tune = unsorted[i]
        n, d, num_classes = shapes[name]
        rows.append(CandidateScores(name, rank, values, probe, n, d, num_classes, seconds, fine_tune))

    notes = []
    no_source = [r.name for r in rows if any(s in _NEEDS_SOURCE and r.scores[s] is None for s in scores)]
    if no_source:
        notes.append(f"no source classifier, so no LEEP / NCE: {', '.join(no_source)}")
    primaries = [r.scores[primary] for r in rows]
    if len(set(primaries)) < len(primaries):
        notes.append(f"some candidates tie on {SCORE_LABELS[primary]}; tied ones keep the input order")

    total_features = sum(r.seconds["features"] for r in rows)
    total = sum(sum(r.seconds.values()) for r in rows)
    estimates = [r.fine_tune_seconds for r in rows if r.fine_tune_seconds is not None]
    cost = RankingCost(
        seconds=total,
        feature_seconds=total_features,
        # A partial sum would understate the fine-tuning cost and flatter the ranking's share.
        fine_tune_seconds=float(sum(estimates)) if len(estimates) == len(rows) else None,
        fine_tune_epochs=fine_tune_epochs,
    )
    return Ranking(rows=tuple(rows), primary=primary, scores=scores, cost=cost, notes=tuple(notes))
