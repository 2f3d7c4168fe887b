"""A CSVLogger that continues ``metrics.csv`` when a run is resumed in its own folder.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts. A resumed
``tl-train`` run writes into the same folder, so that would erase the history of the epochs
already trained. :class:`ResumableCSVLogger` keeps the rows logged up to the checkpoint the run
resumes from (steps ``<= resume_step``) and appends after them; rows logged after that
checkpoint (a partial epoch that is now trained again) are dropped, so no step appears twice.
"""

from __future__ import annotations

import csv
import os
import warnings
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from typing_extensions import override

__all__ = ["ResumableCSVLogger", "resume_step_of"]


def resume_step_of(checkpoint: dict[str, Any]) -> int | None:
    """The logging step a run resumed from ``checkpoint`` continues after (Lightning's ``_batches_that_stepped``)."""
    try:
        loop = checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]
        return int(loop["_batches_that_stepped"])
    except (KeyError, TypeError, ValueError):
        return None


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that, after :meth:`continue_after`, keeps the earlier rows of ``metrics.csv``.

    Args:
        *args: ``CSVLogger`` arguments.
        **kwargs: ``CSVLogger`` keyword arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step: int | None = None

    def continue_after(self, step: int) -> None:
        """Keep the existing rows with ``step <= step`` (call before training starts)."""
        self._resume_step = int(step)

    def _kept_rows(self) -> tuple[list[str], list[dict[str, str]]]:
        path = os.path.join(self.log_dir, "metrics.csv")
        if self._resume_step is None or not os.path.isfile(path):
            return [], []
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            header = list(reader.fieldnames or [])
        kept = []
        for row in rows:
            try:
                step = int(float(row.get("step") or 0))
            except ValueError:
                continue
            if step <= self._resume_step:
                kept.append(row)
        return header, kept

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        header, rows = self._kept_rows()
        with warnings.catch_warnings():
            if self._resume_step is not None:
                # expected on resume: the old file is replaced by its kept rows right below
                warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
            experiment = super().experiment
        if rows:
            experiment.metrics_keys = sorted(header)
            experiment.metrics = rows
            experiment.save()
        return experiment
