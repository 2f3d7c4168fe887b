"""Ctrl+C / SIGTERM during ``tl-train``: finish the step, save a resumable checkpoint, stop.

Lightning turns SIGINT into a ``KeyboardInterrupt`` wherever the program is (possibly half-way
through an optimizer step) and exits with status 1, and turns SIGTERM into a
``SIGTERMException`` that exits with status 0 and may abort a running validation. Neither
leaves a checkpoint of the state reached. :class:`InterruptHandler` replaces both signals'
handlers for the duration of ``fit``: the first signal only sets a flag, and the run stops at
the next safe point:

- after a training batch that is not the last of its epoch: ``last.ckpt`` is written there
  (a mid-epoch checkpoint that resumes exactly, see ``tl_lightning/data/_sampling.py``);
- after the last batch of an epoch: the epoch's validation and its end-of-epoch ``last.ckpt``
  complete first, and the run stops when the next epoch would start (Lightning cannot resume
  exactly from a checkpoint taken between an epoch's last batch and its validation).

A second signal (more than a second after the first) stops at once without saving (``last.ckpt`` then holds the previous safe
point). :class:`RunInterrupted` carries what happened; ``tl-train`` exits with 128 + the
signal number (130 for SIGINT, 143 for SIGTERM), as shells do.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from tl_lightning.callbacks.checkpoint import LastAndBestCheckpoint

__all__ = ["InterruptHandler", "RunInterrupted"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: signals closer together than this are one (delivered to a process group and forwarded)
_SAME_SIGNAL_S = 1.0


class RunInterrupted(BaseException):
    """Training stopped on a signal. A ``BaseException``, so ``except Exception`` code lets it through.

    Attributes:
        signum: The signal number (``signal.SIGINT``, ``signal.SIGTERM``).
        checkpoint: The checkpoint holding the state reached (``None`` when nothing was saved).
        saved_now: Whether ``checkpoint`` was written at the interruption (else it is the last
            end-of-epoch checkpoint).
        epoch: The epoch being trained when the run stopped.
        global_step: Optimizer steps done.
    """

    def __init__(
        self, signum: int, checkpoint: str | None, saved_now: bool, epoch: int | None = None, global_step: int | None = None
    ) -> None:
        super().__init__(f"training interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.checkpoint = checkpoint
        self.saved_now = saved_now
        self.epoch = epoch
        self.global_step = global_step

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def _say(message: str) -> None:
    # os.write, not print: a handler that prints while the interrupted code is printing (the
    # progress bar) raises "reentrant call" on the buffered stream
    try:
        os.write(sys.stderr.fileno(), f"\n{message}\n".encode())
    except (OSError, ValueError, AttributeError):
        pass


def _last_checkpoint(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "last_model_path", "") or ""
    return path if path and Path(path).is_file() else None


class InterruptHandler(Callback):
    """Stop ``fit`` cleanly on SIGINT / SIGTERM with a resumable ``last.ckpt`` (see the module docstring).

    Use :meth:`install` before ``trainer.fit`` and :meth:`uninstall` after it; the callback
    re-installs the handlers when training starts, after Lightning installed its own SIGTERM
    handler.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}
        self._trainer: pl.Trainer | None = None

    def bind(self, trainer: pl.Trainer) -> None:
        """The trainer whose worker processes (DDP) get the signal forwarded."""
        self._trainer = trainer

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks into its workers: handlers and the trainer stay here
        state = self.__dict__.copy()
        state["_previous"] = {}
        state["_trainer"] = None
        return state

    # -- signal handlers -------------------------------------------------------------------
    def install(self) -> None:
        """Handle SIGINT and SIGTERM here (only possible in the main thread; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _SIGNALS:
            current = signal.getsignal(signum)
            if current is not self._handle:
                self._previous.setdefault(signum, current)
                signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signum is not None and now - self._first_at < _SAME_SIGNAL_S:
            # Ctrl+C reaches every process of the group and the parent forwards it too: one signal
            return
        self.count += 1
        if self.signum is None:
            self.signum = signum
            self._first_at = now
        name = signal.Signals(signum).name
        if self.count > 1:
            _say(f"tl-train: second {name}: stopping now, without saving a checkpoint")
            raise KeyboardInterrupt
        if os.environ.get("LOCAL_RANK", "0") == "0":
            _say(
                f"tl-train: {name} received: stopping after this training step (after the validation, at the "
                "end of an epoch) with a resumable checkpoints/last.ckpt; send it again to stop at once, "
                "without saving"
            )
        launcher = getattr(getattr(self._trainer, "strategy", None), "launcher", None)
        if launcher is not None and hasattr(launcher, "kill"):
            # DDP processes started by this one stop at the same step
            launcher.kill(signum)

    # -- Lightning hooks -------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.install()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.install()

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        requested = self.signum is not None
        if trainer.world_size > 1:
            # every rank stops at the same step, even if the signal reached them a step apart
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
            if requested and self.signum is None:
                self.signum = signal.SIGTERM
        return requested

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._stop_requested(trainer):
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch or progress.current.ready >= trainer.num_training_batches:
            return  # the epoch's validation and end-of-epoch checkpoint first; stop at the next epoch start
        self._stop(trainer, save=True)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stop_requested(trainer):
            self._stop(trainer, save=False)

    def _stop(self, trainer: pl.Trainer, save: bool) -> None:
        assert self.signum is not None
        checkpoint = None
        callback = trainer.checkpoint_callback
        if save and isinstance(callback, LastAndBestCheckpoint) and not trainer.fast_dev_run:
            checkpoint = callback.save_last_now(trainer)
        saved_now = checkpoint is not None
        checkpoint = checkpoint or _last_checkpoint(trainer)
        raise RunInterrupted(
            self.signum, checkpoint, saved_now=saved_now, epoch=trainer.current_epoch, global_step=trainer.global_step
        )
