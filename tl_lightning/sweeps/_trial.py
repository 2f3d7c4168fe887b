"""How a sweep job finds its Optuna trial, in whatever process it runs.

The sweeper asks the study for a trial and launches a Hydra job for it; that job may run in the
sweeper's process, in DDP processes started from it (spawned, or re-launched commands) or in a
SLURM job on another machine. The sweeper sets three environment variables for the job
(``hydra.job.env_set``, so they reach every process the job starts): the storage URL, the study
name and the trial's id. Any process of the job reopens the trial from the storage; the study is
never held in memory only.

When the pruner stops a run, the job records it on the trial (user attribute
:data:`PRUNED_ATTR`) and ends training normally (a last checkpoint, the test); the sweeper then
tells the study the trial was pruned. So a pruned run is never mistaken for a crash, whichever
launcher ran it.
"""

from __future__ import annotations

import os
from typing import Any

from tl_lightning.errors import ConfigurationError

__all__ = ["ENV_STORAGE", "ENV_STUDY", "ENV_TRIAL", "PRUNED_ATTR", "job_env_overrides", "trial_from_environment"]

ENV_STORAGE = "TL_OPTUNA_STORAGE"
ENV_STUDY = "TL_OPTUNA_STUDY"
ENV_TRIAL = "TL_OPTUNA_TRIAL_ID"
#: user attribute a job sets on its trial when the pruner stopped it (the epoch)
PRUNED_ATTR = "tl_pruned_at_epoch"


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_env_overrides(storage_url: str, study_name: str, trial_id: int) -> list[str]:
    """Hydra overrides that give one job (and every process it starts) its trial."""
    return [
        f"++hydra.job.env_set.{ENV_STORAGE}={_quoted(storage_url)}",
        f"++hydra.job.env_set.{ENV_STUDY}={_quoted(study_name)}",
        f"++hydra.job.env_set.{ENV_TRIAL}={int(trial_id)}",
    ]


def trial_from_environment(pruner: Any = None) -> Any:
    """The job's ``optuna.Trial``, reopened from the storage (``None`` outside a sweep job).

    Args:
        pruner: The study's pruner (Optuna does not store it with the study); ``None``: no pruning.
    """
    import optuna

    from tl_lightning.sweeps._storage import open_storage

    if ENV_TRIAL not in os.environ:
        return None
    missing = [k for k in (ENV_STORAGE, ENV_STUDY) if not os.environ.get(k)]
    if missing:
        raise ConfigurationError(f"{ENV_TRIAL} is set but {missing} are not; start sweeps with tl-train -m hparams_search=optuna")
    study = optuna.load_study(
        study_name=os.environ[ENV_STUDY],
        storage=open_storage(os.environ[ENV_STORAGE]),
        # no pruner configured means no pruning (Optuna's default would be the median pruner)
        pruner=pruner if pruner is not None else optuna.pruners.NopPruner(),
        # a trial built here never samples; a light sampler keeps it cheap
        sampler=optuna.samplers.RandomSampler(),
    )
    return optuna.trial.Trial(study, int(os.environ[ENV_TRIAL]))
