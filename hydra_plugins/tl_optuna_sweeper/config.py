"""The ``hydra/sweeper: tl_optuna`` config (defaults; conf/hparams_search/optuna.yaml sets the rest)."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TLOptunaSweeperConf:
    """Fields are the arguments of :class:`~hydra_plugins.tl_optuna_sweeper.tl_optuna_sweeper.TLOptunaSweeper`."""

    _target_: str = "hydra_plugins.tl_optuna_sweeper.tl_optuna_sweeper.TLOptunaSweeper"
    # the sampler is built per trial (seed + trial number) and the pruner is passed to the jobs:
    # both arrive as configs, not objects
    _recursive_: bool = False
    study_name: Optional[str] = None
    storage: Optional[str] = None
    direction: str = "maximize"
    n_trials: int = 20
    max_trials: Optional[int] = None
    n_jobs: int = 1
    max_failures: int = 3
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    pruner: Any = None
    params: Optional[Dict[str, str]] = None
    enqueue: Optional[List[Any]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="tl_optuna", node=TLOptunaSweeperConf, provider="tl_lightning")
