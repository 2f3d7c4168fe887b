"""PredictionCSVWriter: ``trainer.predict`` probabilities -> one CSV, rows in input order, also under DDP.

Under DDP, Lightning's predict loop hands each rank an interleaved share of the inputs
(rank ``r`` of ``W`` gets samples ``r, r + W, ...``), so concatenating what each rank
predicted scrambles the order, and writing from every rank gives ``W`` files. This callback
gathers every rank's probabilities together with their dataset indices, puts them back in
dataset order on rank 0, checks that every input got exactly one prediction, and writes the CSV
atomically (a temporary file renamed into place), so an interrupted run never leaves a half
file behind and an existing file is only replaced when asked.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from tl_lightning._checks import check_number
from tl_lightning.errors import ConfigurationError, DataError

__all__ = ["PredictionCSVWriter", "check_output_path", "format_probability", "write_csv_atomically"]


def check_output_path(
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    protected: Iterable[tuple[str, str | os.PathLike[str]]] = (),
    suffix: str = ".csv",
) -> Path:
    """Check that ``output`` can be written, before any work is done; return it (``~`` expanded).

    Args:
        output: The file to write.
        overwrite: Whether an existing file may be replaced.
        protected: ``(name, path)`` pairs that must never be written over (the input, the
            checkpoint), compared after resolving symlinks and relative paths.
        suffix: The required extension (compared case-insensitively).

    Raises:
        ConfigurationError: ``output`` has another extension, is one of the protected files, is
            a folder, exists and ``overwrite`` is false, or its folder does not exist or cannot
            be written to. The message names the path and the fix.

    Example:
        >>> check_output_path("preds.txt")
        Traceback (most recent call last):
        ...
        tl_lightning.errors.ConfigurationError: output 'preds.txt' must be a .csv file; pass output=preds.csv
    """
    path = Path(output).expanduser()
    if path.suffix.lower() != suffix:
        raise ConfigurationError(
            f"output {str(output)!r} must be a {suffix} file; pass output={path.stem or 'predictions'}{suffix}"
        )
    resolved = path.resolve()
    for name, other in protected:
        other_path = Path(other).expanduser()
        same = other_path.resolve() == resolved
        if not same and path.exists() and other_path.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(path, other_path)  # hard links
        if same:
            raise ConfigurationError(
                f"output {str(output)!r} is the {name} ({str(other)!r}); refusing to write over it. "
                "Fix: pass another output=<file>.csv"
            )
    if path.is_dir():
        raise ConfigurationError(f"output {str(output)!r} is a folder; pass output=<folder>/<name>{suffix}")
    if path.exists() and not overwrite:
        raise ConfigurationError(
            f"output {str(output)!r} already exists; pass overwrite=true to replace it, or another output=<file>{suffix}"
        )
    folder = resolved.parent
    if not folder.exists():
        raise ConfigurationError(
            f"the folder of output {str(output)!r} ({str(folder)!r}) does not exist. Fix: create it (mkdir -p) "
            "or pass an output in an existing folder"
        )
    if not folder.is_dir():
        raise ConfigurationError(f"the folder of output {str(output)!r} ({str(folder)!r}) is not a folder")
    try:
        # a real write: os.access says yes to root on a read-only file system
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as err:
        raise ConfigurationError(
            f"cannot write output {str(output)!r}: the folder {str(folder)!r} is not writable ({err.strerror}). "
            "Fix: pass an output in a folder you can write to"
        ) from None
    return path


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_csv_atomically(
    path: str | os.PathLike[str],
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a CSV through a temporary file in the same folder, renamed into place when complete.

    A crash or an error while writing leaves the previous state (no file, or the old one) and
    no temporary file.

    Raises:
        ConfigurationError: ``path`` exists and ``overwrite`` is false (checked again right
            before the rename, for a file that appeared meanwhile).
    """
    target = Path(path).expanduser()
    fd, tmp_name = tempfile.mkstemp(dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(header))
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600 files; give the user's usual permissions
        if target.exists() and not overwrite:
            raise ConfigurationError(
                f"output {str(path)!r} appeared while predicting; pass overwrite=true to replace it"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def format_probability(p: float) -> str:
    """The shortest text that reads back as the same float32 (a probability loses nothing in the CSV).

    Example:
        >>> format_probability(0.25), format_probability(1 / 3), format_probability(1e-9)
        ('0.25', '0.33333334', '1e-09')
    """
    return str(np.float32(p))


def _all_gather(trainer: Trainer, tensor: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        # Lightning gathers through a torch function that newer torch versions deprecate
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")
        return trainer.strategy.all_gather(tensor)


class PredictionCSVWriter(BasePredictionWriter):
    """Write the class probabilities of ``trainer.predict`` to one CSV file, in input order.

    The module's ``predict_step`` must return a ``(batch, num_classes)`` tensor of probabilities
    (:class:`~tl_lightning.TransferClassifier` does). The file has one row per input: ``id``,
    ``label`` (the most probable class; for multi-label models the classes with probability
    above ``threshold`` joined by ``|``, empty when there is none) and ``prob_<class>`` for
    every class. Works on one device and under DDP: every rank's rows are gathered and written
    by rank 0 in dataset order. A prediction missing for some input (e.g. with
    ``limit_predict_batches``) is an error; nothing is written then.

    Args:
        output: The CSV file to write.
        labels: Class names in class-index order. Default: the module's ``labels`` attribute,
            else ``"0"``, ``"1"``, ...
        ids: One id per input, in dataset order. Default: the datamodule's ``predict_ids``, else
            the row numbers.
        multilabel: Whether classes are independent (sigmoid outputs). Default: the module's
            ``task == "multilabel"``.
        threshold: Probability above which a class is predicted (multi-label only).
        overwrite: Replace an existing ``output``.

    Example:
        >>> writer = PredictionCSVWriter("preds.csv", overwrite=True)  # doctest: +SKIP
        >>> Trainer(callbacks=[writer]).predict(model, datamodule=dm, return_predictions=False)  # doctest: +SKIP
        >>> writer.rows_written  # doctest: +SKIP
        120
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        *,
        labels: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        multilabel: bool | None = None,
        threshold: float = 0.5,
        overwrite: bool = False,
    ) -> None:
        super().__init__(write_interval="epoch")
        self.output = Path(output).expanduser()
        if self.output.suffix.lower() != ".csv":
            raise ConfigurationError(f"output {str(output)!r} must be a .csv file")
        self.labels = None if labels is None else [str(label) for label in labels]
        self.ids = None if ids is None else [str(i) for i in ids]
        self.multilabel = multilabel
        self.threshold = check_number("threshold", threshold, low=0.0, high=1.0)
        self.overwrite = bool(overwrite)
        #: rows written by the last ``write_on_epoch_end`` (on rank 0; 0 elsewhere)
        self.rows_written = 0

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "predict" and trainer.is_global_zero:
            check_output_path(self.output, overwrite=self.overwrite)

    @override
    def write_on_epoch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        if len(batch_indices) != 1:
            raise ConfigurationError(
                f"PredictionCSVWriter writes one predict dataloader, got {len(batch_indices)}; predict them one at a time"
            )
        local_indices = [int(i) for batch in batch_indices[0] for i in batch]
        for batch in predictions:
            if not isinstance(batch, torch.Tensor) or batch.ndim != 2:
                shape = f" of shape {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) else ""
                raise ConfigurationError(
                    "predict_step must return a (batch, num_classes) tensor of probabilities for "
                    f"PredictionCSVWriter, got {type(batch).__name__}{shape}"
                )
        local_probs = torch.cat([p.detach().float().cpu() for p in predictions]) if predictions else None
        indices, probs = self._gather(trainer, pl_module, local_indices, local_probs)
        total = self._num_inputs(trainer)
        self._check_complete(indices, total)
        order = torch.argsort(indices)
        probs = probs[order]
        if not trainer.is_global_zero:
            return
        labels = self._labels(pl_module, probs.shape[1])
        ids = self._ids(trainer, total)
        multilabel = (
            self.multilabel
            if self.multilabel is not None
            else getattr(pl_module, "task", None) == "multilabel"
        )
        header = ["id", "label", *(f"prob_{label}" for label in labels)]
        rows = (
            [row_id, self._predicted(row, labels, multilabel), *(format_probability(p) for p in row)]
            for row_id, row in zip(ids, probs.tolist())
        )
        write_csv_atomically(self.output, header, rows, overwrite=self.overwrite)
        self.rows_written = total

    def _predicted(self, row: list[float], labels: list[str], multilabel: bool) -> str:
        if any(not math.isfinite(p) for p in row):
            return ""  # a broken prediction has no class; the NaN probabilities stay visible
        if multilabel:
            return "|".join(label for label, p in zip(labels, row) if p > self.threshold)
        return labels[max(range(len(row)), key=row.__getitem__)]

    def _gather(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        local_indices: list[int],
        local_probs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_local = len(local_indices)
        width = int(local_probs.shape[1]) if local_probs is not None and n_local else 0
        if trainer.world_size == 1:
            probs = local_probs if local_probs is not None else torch.empty(0, width)
            return torch.tensor(local_indices, dtype=torch.long), probs
        device = pl_module.device
        # ranks may hold different numbers of rows (the predict sampler does not pad): pad to the
        # largest share with index -1, gather, then drop the padding
        sizes = _all_gather(trainer, torch.tensor([n_local, width], device=device)).reshape(-1, 2)
        most, width = int(sizes[:, 0].max()), int(sizes[:, 1].max())
        indices = torch.full((most,), -1, dtype=torch.long, device=device)
        probs = torch.zeros(most, width, dtype=torch.float32, device=device)
        if n_local:
            indices[:n_local] = torch.tensor(local_indices, dtype=torch.long, device=device)
            probs[:n_local] = local_probs.to(device)  # type: ignore[union-attr]
        all_indices = _all_gather(trainer, indices).reshape(-1).cpu()
        all_probs = _all_gather(trainer, probs).reshape(-1, width).cpu()
        keep = all_indices >= 0
        return all_indices[keep], all_probs[keep]

    def _num_inputs(self, trainer: Trainer) -> int:
        if self.ids is not None:
            return len(self.ids)
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        return len(loader.dataset)  # type: ignore[union-attr, arg-type]

    @staticmethod
    def _check_complete(indices: torch.Tensor, total: int) -> None:
        counts = (
            torch.bincount(indices[(indices >= 0) & (indices < total)], minlength=total)
            if total
            else torch.zeros(0)
        )
        missing = (counts == 0).nonzero().flatten().tolist()
        repeated = (counts > 1).nonzero().flatten().tolist()
        outside = indices[(indices < 0) | (indices >= total)].tolist()
        if missing or repeated or outside:
            raise DataError(
                f"predictions do not cover the {total} inputs once each: {len(missing)} missing (e.g. rows {missing[:5]}), "
                f"{len(repeated)} predicted more than once, {len(outside)} out of range; nothing was written. "
                "Fix: remove trainer.limit_predict_batches / trainer.fast_dev_run / trainer.overfit_batches"
            )

    def _labels(self, pl_module: LightningModule, width: int) -> list[str]:
        labels = self.labels if self.labels is not None else getattr(pl_module, "labels", None)
        labels = [str(i) for i in range(width)] if labels is None else [str(label) for label in labels]
        if len(labels) != width:
            raise ConfigurationError(
                f"predict_step returned {width} probabilities per input but there are {len(labels)} labels {labels}"
            )
        return labels

    def _ids(self, trainer: Trainer, total: int) -> list[str]:
        if self.ids is not None:
            return self.ids
        ids = getattr(trainer.datamodule, "predict_ids", None) if trainer.datamodule is not None else None
        if ids and len(ids) == total:
            return [str(i) for i in ids]
        return [str(i) for i in range(total)]
