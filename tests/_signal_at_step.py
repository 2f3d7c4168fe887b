"""A callback that sends a signal to its own process after a given optimizer step (simulates SLURM's warning).

``tl-train ... +callbacks.signal._target_=_signal_at_step.SignalAtStep +callbacks.signal.step=4
+callbacks.signal.signum=10`` (with ``tests/`` on ``PYTHONPATH``). It fires once, on rank 0, and never
in a run resumed past that step.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl


class SignalAtStep(pl.Callback):
    def __init__(self, step: int, signum: int) -> None:
        self.step = int(step)
        self.signum = int(signum)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.kill(os.getpid(), self.signum)
