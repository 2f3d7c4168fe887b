"""A sampler seeded per trial, so processes sharing one study never draw the same trials.

Two processes that build the same sampler with the same seed and see the same (empty) study
draw the same parameters: a sweep spread over SLURM array jobs would train every setting N
times. :class:`TrialSeededSampler` builds the configured sampler afresh for each trial with the
seed ``seed + trial.number``: trial numbers are unique across the study (the storage hands them
out), so every trial draws its own numbers, and a sweep stays reproducible trial by trial.
Built-in samplers keep their state in the study (TPE, random, CMA-ES, GP, QMC, NSGA-II), so a
fresh instance per trial samples as one long-lived instance would, up to the random numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

__all__ = ["TrialSeededSampler"]


class TrialSeededSampler(BaseSampler):
    """Delegates to ``factory(seed=seed + trial.number)``, built in ``before_trial``.

    Args:
        factory: Builds the sampler; called with the keyword ``seed``.
        seed: The base seed.
    """

    def __init__(self, factory: Callable[..., BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = int(seed)
        self._current = factory(seed=self._seed)
        self._by_trial: dict[int, BaseSampler] = {}

    @property
    def inner(self) -> BaseSampler:
        """The sampler of the trial asked last."""
        return self._current

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._current = self._factory(seed=self._seed + trial.number)
        self._by_trial[trial.number] = self._current
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        sampler = self._by_trial.pop(trial.number, self._current)
        sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        return self._by_trial.get(trial.number, self._current)
