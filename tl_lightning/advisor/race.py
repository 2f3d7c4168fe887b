"""``finetune=auto search=true``: race a few strategies for a short budget by successive halving, keep the winner.

Synchronous successive halving (Jamieson & Talwalkar, AISTATS 2016) over epochs: every
candidate trains ``min_epochs`` epochs and is scored on the validation metric; the best
``ceil(n / reduction_factor)`` go on to a budget ``reduction_factor`` times larger, and so on
until one is left (or the budget reaches ``max_epochs``, where the best of the rung wins). Each
rung trains its candidates from the start with the rung's budget as ``trainer.max_epochs``, so
every score is that of a complete (short) run of the strategy, schedule included.

The race is an Optuna study (in memory): one trial per candidate, enqueued as ``{"finetune":
name}``, each rung's score reported with ``trial.report(value, step=epochs)``, dropped candidates
told as pruned, the winner as complete: ``RaceResult.study.trials_dataframe()`` is the race
record, as a sweep's would be. Optuna's own ``SuccessiveHalvingPruner`` is asynchronous (ASHA):
run one trial after another, as here, the first trial is never pruned and trains its whole
budget, which is what a race must avoid; the rung loop below is the synchronous variant.

A candidate whose run fails with a library error (a strategy that does not apply to this
backbone) scores nothing, is told as failed and leaves the race; the error is in the record.
If every candidate fails, the first error is raised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tl_lightning._checks import check_choice, check_int
from tl_lightning.errors import ConfigurationError, TLError

__all__ = ["RaceResult", "Rung", "successive_halving"]


@dataclass(frozen=True)
class Rung:
    """One round of the race: every candidate's score at ``epochs`` and who went on."""

    epochs: int
    scores: dict[str, float | None]
    kept: tuple[str, ...]


@dataclass
class RaceResult:
    """Outcome of :func:`successive_halving`.

    Attributes:
        winner: The candidate kept.
        rungs: Every round, in order.
        errors: ``{candidate: error message}`` of the candidates whose run failed.
        study: The Optuna study holding one trial per candidate.
        epochs_trained: Epochs trained over the whole race (the race's cost in epochs).
    """

    winner: str
    rungs: list[Rung]
    errors: dict[str, str] = field(default_factory=dict)
    study: Any = None
    epochs_trained: int = 0

    def format(self, metric: str = "val") -> str:
        """A markdown table: one row per candidate, one column per rung."""
        names = list(self.rungs[0].scores) if self.rungs else []
        header = "| strategy | " + " | ".join(f"{r.epochs} ep" for r in self.rungs) + " |"
        lines = [f"race on {metric} (successive halving):", header, "|---|" + "---:|" * len(self.rungs)]
        for name in names:
            cells = []
            for rung in self.rungs:
                if name not in rung.scores:
                    cells.append("")
                    continue
                value = rung.scores[name]
                text = "failed" if value is None else f"{value:.4f}"
                cells.append(
                    f"**{text}**" if name in rung.kept and len(rung.kept) < len(rung.scores) else text
                )
            mark = " (winner)" if name == self.winner else ""
            lines.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
        for name, message in self.errors.items():
            lines.append(f"{name} failed: {message}")
        lines.append(f"{self.epochs_trained} epochs trained in the race; winner: {self.winner}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Plain dict of the race."""
        return {
            "winner": self.winner,
            "rungs": [{"epochs": r.epochs, "scores": r.scores, "kept": list(r.kept)} for r in self.rungs],
            "errors": dict(self.errors),
            "epochs_trained": self.epochs_trained,
        }


def successive_halving(
    candidates: Sequence[str],
    evaluate: Callable[[str, int], float],
    *,
    min_epochs: int = 1,
    max_epochs: int = 4,
    reduction_factor: int = 2,
    direction: str = "maximize",
) -> RaceResult:
    """Race ``candidates`` by synchronous successive halving; ``evaluate(name, epochs)`` trains and scores one.

    Args:
        candidates: Strategy names, in order of preference (ties go to the earlier one).
        evaluate: Trains ``name`` for ``epochs`` epochs and returns its validation score.
        min_epochs: The first rung's budget.
        max_epochs: The largest budget (the last rung is capped at it).
        reduction_factor: Each rung keeps ``ceil(n / reduction_factor)`` candidates and multiplies
            the budget by it.
        direction: ``"maximize"`` (accuracy) or ``"minimize"`` (loss).

    Returns:
        The :class:`RaceResult`.

    Raises:
        ConfigurationError: Bad arguments, or optuna is not installed.
        TLError: Every candidate failed (the first failure).

    Example:
        >>> quality = {"full": 0.9, "llrd": 0.8, "lp_ft": 0.85}
        >>> result = successive_halving(list(quality), lambda name, epochs: quality[name], max_epochs=4)
        >>> result.winner, [r.epochs for r in result.rungs]
        ('full', [1, 2])
    """
    names = [str(c) for c in candidates]
    if not names or len(set(names)) != len(names):
        raise ConfigurationError(f"the race needs distinct candidate strategies, got {list(candidates)!r}")
    min_epochs = check_int("finetune.search_min_epochs", min_epochs, low=1)
    max_epochs = check_int("finetune.search_max_epochs", max_epochs, low=min_epochs)
    reduction_factor = check_int("finetune.search_reduction_factor", reduction_factor, low=2)
    check_choice("direction", direction, ("maximize", "minimize"))
    try:
        import optuna
    except ImportError as err:
        raise ConfigurationError(
            "finetune.search=true races strategies with Optuna, which is not installed. Fix: pip install "
            "'tl-lightning[sweeps]' (optuna>=4), or finetune.search=false"
        ) from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, study_name="finetune_auto_race")
    distribution = {"finetune": optuna.distributions.CategoricalDistribution(names)}
    trials = {}
    for name in names:
        study.enqueue_trial({"finetune": name})
        trials[name] = study.ask(distribution)

    sign = 1.0 if direction == "maximize" else -1.0
    alive = list(names)
    errors: dict[str, str] = {}
    first_error: TLError | None = None
    rungs: list[Rung] = []
    epochs_trained = 0
    final: dict[str, float | None] = {}
    budget = min_epochs
    while True:
        scores: dict[str, float | None] = {}
        for name in alive:
            try:
                value = float(evaluate(name, budget))
            except TLError as err:
                first_error = first_error or err
                errors[name] = f"{type(err).__name__}: {err}"
                scores[name] = None
                study.tell(trials[name], state=optuna.trial.TrialState.FAIL)
                continue
            epochs_trained += budget
            scores[name] = value if math.isfinite(value) else None
            trials[name].report(value if math.isfinite(value) else float("nan"), step=budget)
        ranked = sorted(
            (n for n in alive if scores[n] is not None),
            key=lambda n: -sign * scores[n],  # type: ignore[operator]
        )  # stable: ties keep the order of preference
        if not ranked:
            if first_error is not None and len(errors) == len(alive):
                raise first_error
            raise ConfigurationError(f"no candidate produced a finite score at {budget} epochs: {scores}")
        keep = 1 if budget >= max_epochs else math.ceil(len(alive) / reduction_factor)
        kept = tuple(ranked[:keep])
        for name in alive:
            if name not in kept and name not in errors:
                study.tell(trials[name], state=optuna.trial.TrialState.PRUNED)
        rungs.append(Rung(budget, scores, kept))
        final = scores
        alive = list(kept)
        if len(alive) == 1:
            break
        budget = min(budget * reduction_factor, max_epochs)
    winner = alive[0]
    study.tell(trials[winner], final[winner])
    return RaceResult(winner=winner, rungs=rungs, errors=errors, study=study, epochs_trained=epochs_trained)
