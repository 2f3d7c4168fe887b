"""The ``tl_optuna`` Hydra sweeper: Optuna's ask-and-tell API driving Hydra's launchers.

One sweep process asks the study for ``n_jobs`` trials at a time, launches one Hydra job per
trial through the configured launcher (local, joblib, SLURM via submitit), and tells the study
each job's result (``optimized_metric`` returned by ``tl-train``), or that the job was pruned or
failed. The study lives in a storage every process can open (a journal file in the sweep folder
by default; SQLite, a journal file on a shared file system or a database server by URL), so
several sweep processes, or SLURM array jobs, fill one study: each asks the storage for its next
trial, trial numbers are unique, and the sampler is seeded per trial number, so no two processes
train the same parameters.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_DIRECTIONS = ("maximize", "minimize")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _secondary_rank() -> str | None:
    """The rank variable that makes this process a secondary rank of a distributed launch, if any."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return f"{var}={value}"
    return None


class TLOptunaSweeper(Sweeper):
    """Optuna sweeps for ``tl-train`` (see the module docstring and ``conf/hparams_search/optuna.yaml``).

    Args:
        study_name: The study; processes with the same storage and name share it.
        storage: ``None`` (a journal file ``optuna.journal`` in the sweep folder), ``sqlite:///file.db``,
            ``journal:<file>``, ``postgresql://...``, ``mysql+pymysql://...``, ``grpc://host:port``.
        direction: ``"maximize"`` or ``"minimize"`` the value the jobs return (``optimized_metric``).
        n_trials: Trials this process runs.
        max_trials: Stop asking once the study holds this many trials (every process together;
            failed trials do not count); ``None``: no limit.
        n_jobs: Trials launched together (one batch for the launcher: parallel with joblib or SLURM).
        max_failures: Stop the sweep after this many failed trials in this process.
        sampler: The sampler config (``_target_``, arguments); built per trial with
            ``seed = seed + trial number`` when it has a ``seed``.
        pruner: The pruner config; the jobs' ``OptunaPruning`` callback gets the same.
        params: ``{override key: sweep}`` search space (``tag(log, interval(1e-5, 1e-2))``,
            ``choice(16, 32)``, ``range(1, 5)``); sweeps on the command line join it.
        enqueue: Trials to run first, as ``{key: value}`` mappings (known good settings); skipped
            when the study has them already.
    """

    def __init__(
        self,
        study_name: str | None = None,
        storage: str | None = None,
        direction: str = "maximize",
        n_trials: int = 20,
        max_trials: int | None = None,
        n_jobs: int = 1,
        max_failures: int = 3,
        sampler: Any = None,
        pruner: Any = None,
        params: Any = None,
        enqueue: Any = None,
    ) -> None:
        from tl_lightning._checks import check_choice, check_int

        check_choice("hydra.sweeper.direction", direction, _DIRECTIONS)
        check_int("hydra.sweeper.n_trials", n_trials, low=1)
        check_int("hydra.sweeper.n_jobs", n_jobs, low=1)
        check_int("hydra.sweeper.max_failures", max_failures, low=0)
        if max_trials is not None:
            check_int("hydra.sweeper.max_trials", max_trials, low=1)
        self.study_name = study_name
        self.storage = storage
        self.direction = direction
        self.n_trials = n_trials
        self.max_trials = max_trials
        self.n_jobs = n_jobs
        self.max_failures = max_failures
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.params: dict[str, str] = dict(_plain(params) or {})
        self.enqueue: list[dict[str, Any]] = list(_plain(enqueue) or [])
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.study: Any = None
        self.storage_url: str | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        from tl_lightning.errors import ConfigurationError

        rank = _secondary_rank()
        if rank is not None:
            # every rank would ask the study for its own trial: each GPU would train other parameters
            raise ConfigurationError(
                f"the tl_optuna sweeper started in a secondary rank of a distributed launch ({rank}), so each rank "
                "would train other hyperparameters. Fix: run the sweep itself outside srun / torchrun (tl-train -m "
                "hparams_search=optuna ...), with trainer=ddp (tl-train starts the ranks of each trial) or "
                "hydra/launcher=slurm (each trial a SLURM job whose tasks all train that trial)"
            )
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------------ study
    def _sampler(self) -> Any:
        from hydra.utils import instantiate

        from tl_lightning.sweeps._sampler import TrialSeededSampler

        cfg = self.sampler_cfg
        if cfg is None:
            return None
        cfg = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
        factory = instantiate(cfg, _partial_=True)
        seed = factory.keywords.pop("seed", None)
        if seed is None:
            return factory()
        return TrialSeededSampler(factory, int(seed))

    def _pruner(self) -> Any:
        from hydra.utils import instantiate

        if self.pruner_cfg is None:
            import optuna

            return optuna.pruners.NopPruner()
        return instantiate(self.pruner_cfg)

    def _open_study(self, sweep_dir: Path) -> Any:
        import optuna

        from tl_lightning.sweeps._storage import open_storage, storage_url

        self.storage_url = storage_url(self.storage, sweep_dir / "optuna.journal")
        name = self.study_name or str(self.config.hydra.job.name if self.config is not None else "tl-train")
        study = optuna.create_study(
            study_name=name,
            storage=open_storage(self.storage_url),
            sampler=self._sampler(),
            pruner=self._pruner(),
            direction=self.direction,
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            from tl_lightning.errors import ConfigurationError

            raise ConfigurationError(
                f"study {name!r} in {self.storage_url} was created to {study.direction.name.lower()}, but "
                f"hydra.sweeper.direction={self.direction}. Fix: use the study's direction or another study_name"
            )
        for params in self.enqueue:
            study.enqueue_trial(dict(params), skip_if_exists=True)
        return study

    def _room(self, study: Any) -> int:
        """Trials the study may still take under ``max_trials`` (unbounded: a large number)."""
        if self.max_trials is None:
            return 1 << 30
        from optuna.trial import TrialState

        counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        return max(0, self.max_trials - len(study.get_trials(deepcopy=False, states=counted)))

    # ------------------------------------------------------------------ sweep
    def sweep(self, arguments: list[str]) -> Any:
        from tl_lightning.sweeps._results import JOB_DIR_ATTR, write_results
        from tl_lightning.sweeps._space import search_space
        from tl_lightning.sweeps._trial import job_env_overrides

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        space = search_space(self.params, arguments, self.hydra_context.config_loader)
        if not space.distributions:
            from tl_lightning.errors import ConfigurationError

            raise ConfigurationError(
                "the tl_optuna sweeper has an empty search space. Fix: set hydra.sweeper.params (e.g. "
                "model.lr: tag(log, interval(1e-5, 1e-2))) or pass sweeps on the command line"
            )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.study = study = self._open_study(sweep_dir)
        log.info(
            f"Study {study.study_name!r} in {self.storage_url}: {len(study.trials)} trial(s) so far; this process runs "
            f"up to {self.n_trials}, {self.n_jobs} at a time. Search space: "
            + ", ".join(f"{k}: {v}" for k, v in space.distributions.items())
        )
        returns: list[list[JobReturn]] = []
        done = failures = 0
        while done < self.n_trials:
            size = min(self.n_jobs, self.n_trials - done, self._room(study))
            if size <= 0:
                log.info(f"The study holds max_trials={self.max_trials} trials: done")
                break
            trials = [study.ask(space.distributions) for _ in range(size)]
            numbers = [t.number for t in trials]
            batch = []
            for trial in trials:
                overrides = space.overrides(trial.params) + job_env_overrides(self.storage_url, study.study_name, trial._trial_id)
                if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
                    # another process took numbers in between: the job folders still carry the trial numbers
                    overrides.append(f"hydra.sweep.subdir={trial.number}")
                batch.append(overrides)
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=numbers[0])
            for trial, result in zip(trials, results):
                if result.hydra_cfg is not None:
                    trial.set_user_attr(JOB_DIR_ATTR, str(result.hydra_cfg.hydra.runtime.output_dir))
                failures += not self._tell(study, trial, result)
            returns.append(list(results))
            done += size
            write_results(study, sweep_dir, self.storage_url, importances=False)
            if failures > self.max_failures:
                raise RuntimeError(
                    f"{failures} trials failed (hydra.sweeper.max_failures={self.max_failures}); see the job logs in "
                    f"{sweep_dir}. The last error: {self._last_error}"
                )
        results_dict = write_results(study, sweep_dir, self.storage_url)
        if "best_trial" in results_dict:
            log.info(
                f"Best trial {results_dict['best_trial']}: {results_dict['best_value']} with {results_dict['best_params']} "
                f"(written to {sweep_dir / 'optimization_results.yaml'})"
            )
        return returns

    _last_error: str = ""

    def _tell(self, study: Any, trial: Any, result: JobReturn) -> bool:
        """Tell the study how the trial's job ended; ``False`` when it failed."""
        from optuna.trial import TrialState

        from tl_lightning.sweeps._trial import PRUNED_ATTR

        attrs = study._storage.get_trial(trial._trial_id).user_attrs
        params = ", ".join(f"{k}={v}" for k, v in trial.params.items())
        if PRUNED_ATTR in attrs:
            study.tell(trial, state=TrialState.PRUNED)
            log.info(f"Trial {trial.number} ({params}) pruned at epoch {attrs[PRUNED_ATTR]}")
            return True
        if result.status == JobStatus.COMPLETED:
            value = result.return_value
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                study.tell(trial, float(value))
                log.info(f"Trial {trial.number} ({params}): {float(value):.6g}")
                return True
            self._last_error = (
                f"trial {trial.number} returned {value!r}, not a finite number: optimized_metric is not a metric the "
                "run logged, or it diverged"
            )
        else:
            self._last_error = f"trial {trial.number}: {type(result._return_value).__name__}: {result._return_value}"
        study.tell(trial, state=TrialState.FAIL)
        log.warning(f"Trial {trial.number} ({params}) failed: {self._last_error}")
        return False
