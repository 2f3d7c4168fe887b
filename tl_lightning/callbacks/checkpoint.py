"""ModelCheckpoint whose ``last.ckpt`` is always the latest state and whose "best" is always finite.

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when a top-k
checkpoint was saved in the same step, so with ``monitor="val/acc", save_top_k=1`` it is the
best epoch, not the last one, and resuming from it silently redoes (and forgets) every epoch
since. It also ranks a NaN monitor value as the worst score but still keeps it while fewer
than ``save_top_k`` checkpoints exist, so a first epoch that diverged becomes "best".

:class:`LastAndBestCheckpoint` fixes both: ``last.ckpt`` is rewritten at the end of every
epoch (and when training ends), whatever the monitored metric does, and a checkpoint is a
top-k candidate only when the monitored value and every weight are finite (otherwise a warning
says so and the previous best stays).
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

__all__ = ["LastAndBestCheckpoint", "weights_are_finite"]


def weights_are_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite (one device sync, not one per tensor)."""
    bad: Tensor | None = None
    for p in module.parameters():
        flag = ~torch.isfinite(p.detach()).all()
        bad = flag if bad is None else bad | flag.to(bad.device)
    return bad is None or not bool(bad)


class LastAndBestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with ``last.ckpt`` = the latest state and finite-only top-k checkpoints.

    Takes every ``ModelCheckpoint`` argument (``save_last=True`` is the default here).

    Example:
        >>> ckpt = LastAndBestCheckpoint(dirpath="run/checkpoints", monitor="val/acc", mode="max")
        >>> ckpt.save_last
        True
    """

    def __init__(self, *args: Any, save_last: bool | str | None = True, **kwargs: Any) -> None:
        super().__init__(*args, save_last=save_last, **kwargs)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the same folder spelled differently (a symlink, a relative path) is still the same run
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and saved != self.dirpath and os.path.realpath(saved) == os.path.realpath(self.dirpath):
            state_dict = {**state_dict, "dirpath": self.dirpath}
        super().load_state_dict(state_dict)

    # -- last.ckpt: every epoch ------------------------------------------------------------
    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # epochs without validation (check_val_every_n_epoch > 1) still end with a fresh last.ckpt
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # stopped between epoch ends (max_steps, time limit): keep that state too
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        if self._last_global_step_saved != trainer.global_step or not self._last_checkpoint_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def save_last_now(self, trainer: pl.Trainer) -> str | None:
        """Write ``last.ckpt`` now (e.g. when the run is interrupted); returns its path.

        Returns ``None`` (and writes nothing) when the weights are not finite.
        """
        if not self.save_last:
            self.save_last = True
        if not self._finite_weights(trainer, "last.ckpt keeps the previous state"):
            return None
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return self.last_model_path or None

    # -- finite only -----------------------------------------------------------------------
    def _finite_weights(self, trainer: pl.Trainer, consequence: str) -> bool:
        finite = trainer.strategy.reduce_boolean_decision(weights_are_finite(trainer.lightning_module), all=True)
        if not finite:
            rank_zero_warn(
                f"the model has NaN / inf weights at epoch {trainer.current_epoch}, step {trainer.global_step}: "
                f"{consequence}. Fix: lower the learning rate (model.lr) or clip gradients "
                "(trainer.gradient_clip_val=1.0)"
            )
        return finite

    @override
    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self.save_last and not self._finite_weights(trainer, "last.ckpt keeps the previous state"):
            return
        super()._save_last_checkpoint(trainer, monitor_candidates)

    @override
    def _save_monitor_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        current = monitor_candidates.get(self.monitor) if self.monitor else None
        if current is not None and not bool(torch.isfinite(torch.as_tensor(current)).all()):
            rank_zero_warn(
                f"{self.monitor} is {float(current)} at epoch {trainer.current_epoch}: not a candidate for the "
                f"best checkpoint (best so far: {self.best_model_path or 'none'})"
            )
            return
        if not self._finite_weights(trainer, "not a candidate for the best checkpoint"):
            return
        super()._save_monitor_checkpoint(trainer, monitor_candidates)

    @override
    def _save_none_monitor_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if not self._finite_weights(trainer, "no checkpoint saved"):
            return
        super()._save_none_monitor_checkpoint(trainer, monitor_candidates)
