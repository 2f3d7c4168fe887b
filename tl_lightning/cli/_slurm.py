"""SLURM: a job told to stop checkpoints, is requeued, and continues exactly where it stopped.

SLURM warns a job before its time limit with a signal (``#SBATCH --signal=USR1@120``; submitit,
behind ``hydra/launcher=slurm``, asks for USR2) and stops a preempted job with SIGTERM. Under
SLURM (``SLURM_JOB_ID`` set), ``tl-train`` handles SIGUSR1 and SIGUSR2 as it handles SIGTERM
(:mod:`tl_lightning.cli._interrupt`: finish the training step, write ``checkpoints/last.ckpt``,
stop), then requeues the job (``scontrol requeue $SLURM_JOB_ID``, from rank 0); after a SIGTERM
it only checkpoints (a preempted job is requeued by SLURM when the partition says so, and a
cancelled one must stay cancelled). Either way it leaves a note in the run folder
(:data:`REQUEUE_NOTE`, the job id).

The requeued job is the same job (same ``SLURM_JOB_ID``, ``SLURM_RESTART_COUNT`` >= 1) running the
same command: it finds the note in its run folder and resumes from ``last.ckpt`` there. The run
folder must therefore not depend on the clock: under ``hydra/launcher=slurm`` it is the sweep
job's folder (fixed when the sweep was submitted); with ``srun tl-train`` in your own batch
script, name it after the job: ``hydra.run.dir='outputs/<task>/slurm_${oc.env:SLURM_JOB_ID}'``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from tl_lightning.cli._interrupt import InterruptHandler, RunInterrupted

__all__ = ["REQUEUE_NOTE", "SlurmInterruptHandler", "interrupt_handler", "is_requeued_run", "requeued_checkpoint"]

#: written into the run folder when a SLURM job stopped to be continued; holds the job id
REQUEUE_NOTE = ".tl-train-slurm-requeue"
_WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def _job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or None


def _restarted() -> bool:
    value = os.environ.get("SLURM_RESTART_COUNT", "0") or "0"
    return value.isdigit() and int(value) > 0


def is_requeued_run(folder: str | os.PathLike[str]) -> bool:
    """Whether this process is a requeued SLURM job continuing the run in ``folder``."""
    job = _job_id()
    note = Path(folder) / REQUEUE_NOTE
    return bool(job) and _restarted() and note.is_file() and note.read_text().strip() == job


def requeued_checkpoint(folder: str | os.PathLike[str]) -> str | None:
    """``<folder>/checkpoints/last.ckpt`` when this is a requeued SLURM job continuing that run, else ``None``."""
    last = Path(folder) / "checkpoints" / "last.ckpt"
    return str(last) if is_requeued_run(folder) and last.exists() else None


class SlurmInterruptHandler(InterruptHandler):
    """:class:`~tl_lightning.cli._interrupt.InterruptHandler` that also handles SLURM's warning signals.

    Args:
        run_folder: The run folder (where the requeue note goes).
    """

    def __init__(self, run_folder: str | os.PathLike[str]) -> None:
        super().__init__()
        self.run_folder = Path(run_folder)
        self.requeued = False

    @override
    def install(self) -> None:
        super().install()
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _WARNING_SIGNALS:
            current = signal.getsignal(signum)
            if current is not self._handle:
                self._previous.setdefault(signum, current)
                signal.signal(signum, self._handle)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, RunInterrupted):
            self.stopped(exception, trainer.is_global_zero)

    def stopped(self, stop: RunInterrupted, is_global_zero: bool = True) -> None:
        """Leave the requeue note and, after a warning signal, requeue the job (rank 0 only)."""
        job = _job_id()
        if not job or not is_global_zero or stop.signum not in (*_WARNING_SIGNALS, signal.SIGTERM):
            return
        self.run_folder.mkdir(parents=True, exist_ok=True)
        (self.run_folder / REQUEUE_NOTE).write_text(f"{job}\n")
        if stop.signum == signal.SIGTERM:
            return
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            rank_zero_warn(f"tl-train: could not requeue SLURM job {job} ({err}); resubmit it to continue")
            return
        if done.returncode != 0:
            rank_zero_warn(f"tl-train: scontrol requeue {job} failed: {done.stderr.strip()[:300]}")
            return
        self.requeued = True
        print(f"tl-train: requeued SLURM job {job}; it continues from {stop.checkpoint}", flush=True)


def interrupt_handler(run_folder: str | os.PathLike[str]) -> Any:
    """The interrupt handler for ``tl-train``: SLURM-aware when running under SLURM."""
    return SlurmInterruptHandler(run_folder) if _job_id() else InterruptHandler()
