"""Optuna pruning from the validation metric, every epoch, correct under DDP and FSDP."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from tl_lightning.errors import ConfigurationError

__all__ = ["OptunaPruning"]


class OptunaPruning(Callback):
    """Report ``monitor`` to an Optuna trial after each epoch's validation; stop the run when the pruner says so.

    Rank 0 reports (one value per epoch: the first validation of the epoch) and asks the pruner;
    every rank gets its decision, so all of them stop at the same epoch. A pruned run is not
    killed: it stops like early stopping (its last checkpoint is written, the test runs), and the
    trial is marked (user attribute ``tl_pruned_at_epoch``) so the sweeper records it as pruned.

    Under the ``tl_optuna`` sweeper (``tl-train -m hparams_search=optuna``) the trial is found on
    its own, in any process of the job (see :mod:`tl_lightning.sweeps._trial`); in your own Optuna
    loop pass it.

    Args:
        monitor: The metric reported (``"val/acc"``, ``"val/loss"``); the study's direction says
            which way is better.
        trial: An ``optuna.Trial`` (your own ``study.optimize`` objective); ``None``: the sweep job's trial.
        pruner: The study's pruner when the trial is found from the sweep job (Optuna does not
            store pruners with studies); the sweeper config passes its own.

    Example:
        >>> def objective(trial):  # doctest: +SKIP
        ...     model = TransferClassifier("timm:resnet50", labels=labels, lr=trial.suggest_float("lr", 1e-5, 1e-2, log=True))
        ...     trainer = Trainer(max_epochs=10, callbacks=[OptunaPruning("val/acc", trial=trial)])
        ...     trainer.fit(model, datamodule=dm)
        ...     return trainer.callback_metrics["val/acc"].item()
    """

    def __init__(self, monitor: str = "val/loss", trial: Any = None, pruner: Any = None) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ConfigurationError(f"OptunaPruning monitor must be a metric name such as 'val/loss', got {monitor!r}")
        self.monitor = monitor
        self.pruner = pruner
        self._trial = trial
        self._reported: set[int] = set()
        self._active = True
        self.pruned_at: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # spawned DDP processes reopen the sweep job's trial from the storage (a Trial holds its study)
        return {**self.__dict__, "_trial": None}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.global_rank != 0:
            return
        if self._trial is None:
            from tl_lightning.sweeps._trial import trial_from_environment

            self._trial = trial_from_environment(self.pruner)
        if self._trial is None:
            raise ConfigurationError(
                "OptunaPruning has no trial: pass trial=<optuna.Trial> (with strategy=ddp, not ddp_spawn: spawned "
                "processes cannot receive it), or run under the tl_optuna sweeper (tl-train -m hparams_search=optuna)"
            )
        state = self._trial.study._storage.get_trial(self._trial._trial_id).state
        if state.is_finished():
            self._active = False
            rank_zero_warn(
                f"OptunaPruning: trial {self._trial.number} is already {state.name.lower()} (a resumed sweep job?); "
                "this run reports nothing to the study"
            )

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        prune = False
        if trainer.global_rank == 0 and self._active and self._trial is not None and epoch not in self._reported:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                raise ConfigurationError(
                    f"OptunaPruning monitors {self.monitor!r}, which was not logged; logged: "
                    f"{sorted(trainer.callback_metrics)}. Fix: set monitor= (optimized_metric) to one of them"
                )
            value = float(value)
            self._trial.report(value if math.isfinite(value) else float("nan"), step=epoch)
            self._reported.add(epoch)
            prune = bool(self._trial.should_prune())
            if prune:
                from tl_lightning.sweeps._trial import PRUNED_ATTR

                self._trial.set_user_attr(PRUNED_ATTR, epoch)
        if trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned_at = epoch
            trainer.should_stop = True
            rank_zero_info(f"[OptunaPruning] trial pruned at epoch {epoch} ({self.monitor}); stopping this run")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"reported": sorted(self._reported), "pruned_at": self.pruned_at}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._reported = set(state_dict.get("reported", []))
        self.pruned_at = state_dict.get("pruned_at")

