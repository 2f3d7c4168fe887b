"""What a sweep leaves in its folder: the best trial, parameter importances and every trial.

``optimization_results.yaml`` holds the study (name, storage, direction), the best trial (number,
value, parameters, its job folder), the trials by state and, once two trials completed, the
parameter importances (Optuna's default fANOVA evaluator: the share of the objective's variance
each parameter explains). ``trials.csv`` has one row per trial. Both describe the whole study,
so every process of a shared study writes the same picture into its own sweep folder.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

__all__ = ["RESULTS_FILE", "TRIALS_FILE", "write_results"]

RESULTS_FILE = "optimization_results.yaml"
TRIALS_FILE = "trials.csv"
#: user attribute holding the job folder of a trial
JOB_DIR_ATTR = "tl_job_dir"

log = logging.getLogger(__name__)


def _importances(study: Any) -> dict[str, float] | str:
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"needs 2 completed trials, the study has {len(complete)}"
    try:
        found = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as err:  # e.g. every trial had the same parameters
        return f"not computed: {err}"
    return {str(k): round(float(v), 6) for k, v in found.items()}


def write_results(study: Any, folder: str | Path, storage_url: str, importances: bool = True) -> dict[str, Any]:
    """Write ``optimization_results.yaml`` and ``trials.csv`` for ``study`` into ``folder``; return the results."""
    from optuna.trial import TrialState

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    results: dict[str, Any] = {
        "name": "tl_optuna",
        "study_name": study.study_name,
        "storage": storage_url,
        "direction": study.direction.name.lower(),
        "trials": dict(sorted(states.items())),
    }
    if any(t.state == TrialState.COMPLETE for t in trials):
        best = study.best_trial
        results.update(
            best_trial=best.number,
            best_value=float(best.value),
            best_params=dict(best.params),
            best_job_dir=best.user_attrs.get(JOB_DIR_ATTR),
        )
    if importances:
        results["param_importances"] = _importances(study)
    OmegaConf.save(OmegaConf.create(results), folder / RESULTS_FILE)
    try:
        study.trials_dataframe().to_csv(folder / TRIALS_FILE, index=False)
    except ImportError:  # pandas is a tl_lightning dependency; a stripped environment only loses the table
        log.warning("trials.csv not written: pandas is not installed")
    return results
