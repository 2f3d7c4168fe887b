"""PerClassReport: per-class (and per-subgroup) precision / recall / F1 at test time, with a confusion matrix.

An overall accuracy hides the classes and the subgroups transfer fails on. After ``trainer.test``
the callback writes into the run folder:

* ``per_class.csv``: precision, recall, F1 and support of each class (class names from the
  model's ``labels``), then ``accuracy``, ``macro avg`` and ``weighted avg``; for multi-label
  models one row per label with its 2x2 counts (``tp fp fn tn``);
* ``confusion_matrix.csv`` and ``confusion_matrix.png`` (multi-class; rows: true class,
  columns: predicted class);
* ``per_group.csv`` when the data module tells each test row's subgroup
  (``test_groups()``, e.g. ``TextClassificationDataModule(group_column="region")``): the same
  report for every subgroup.

The numbers are over the whole test set under DDP: predictions, targets and dataset indices
are gathered from every rank, and the duplicates ``DistributedSampler`` pads the last batches
with are dropped by index.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from tl_lightning._checks import check_choice, check_fraction
from tl_lightning.diagnostics._inputs import InputFn, batch_inputs
from tl_lightning.diagnostics._metrics import (
    COLUMNS,
    confusion_matrix,
    multilabel_report,
    report_from_confusion,
)
from tl_lightning.diagnostics._output import (
    log_image,
    new_figure,
    require_matplotlib,
    resolve_dir,
    save_figure,
)
from tl_lightning.errors import ConfigurationError

__all__ = ["PerClassReport", "gather_rows", "plot_confusion_matrix"]

Task = Literal["multiclass", "multilabel"]
# logging one metric per class floods the loggers beyond this many classes
_MAX_LOGGED_CLASSES = 100


def gather_rows(trainer: pl.Trainer, rows: Tensor, device: torch.device) -> Tensor:
    """Concatenate ``rows`` of every rank (rank order); ranks may hold different row counts.

    Every rank must call it (it runs collectives).
    """
    if trainer.world_size <= 1:
        return rows
    local = rows.to(device)
    sizes = trainer.strategy.all_gather(torch.tensor([local.shape[0]], device=device)).view(-1).tolist()
    longest = int(max(sizes))
    if local.shape[0] < longest:
        pad = torch.zeros((longest - local.shape[0], *local.shape[1:]), dtype=local.dtype, device=device)
        local = torch.cat([local, pad])
    gathered = trainer.strategy.all_gather(local)  # (world, longest, ...)
    return torch.cat([gathered[r, : int(n)] for r, n in enumerate(sizes)]).cpu()


def _served_indices(loader: Any) -> list[int] | None:
    """Dataset indices in the order ``loader`` serves them, when that order is fixed (else ``None``)."""
    if (
        not isinstance(loader, DataLoader)
        or isinstance(loader.dataset, IterableDataset)
        or loader.batch_sampler is None
    ):
        return None
    first = [int(i) for batch in loader.batch_sampler for i in batch]
    second = [int(i) for batch in loader.batch_sampler for i in batch]
    return first if first == second else None  # a shuffling sampler gives two different orders


def plot_confusion_matrix(cm: Tensor, labels: Sequence[str], path: Path, title: str = "") -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted; colour: share of the row, text: count)."""
    n = len(labels)
    side = min(20.0, 3.5 + 0.45 * n)
    fig = new_figure(side + 1.5, side)
    ax = fig.add_subplot(1, 1, 1)
    counts = cm.double()
    shares = counts / counts.sum(1, keepdim=True).clamp(min=1)
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 40:
        ax.set_xticks(range(n), [str(x) for x in labels], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), [str(x) for x in labels], fontsize=8)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return save_figure(fig, path)


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                [
                    "" if row.get(c) is None else (f"{row[c]:.6f}" if isinstance(row[c], float) else row[c])
                    for c in columns
                ]
            )
    return path


class PerClassReport(Callback):
    """Write per-class (and per-subgroup) precision / recall / F1 and the confusion matrix after testing.

    Where the predictions come from (the documented interface): when ``test_step`` returns a
    mapping with ``"logits"`` (or ``"probs"``, or ``"preds"``: class indices, or 0/1 per label)
    and ``"targets"``, those are used (``TransferClassifier`` returns them). Otherwise the batch
    must be an ``(inputs, targets)`` pair and the callback runs ``module(inputs)`` once more to
    get logits.

    Class names come from ``labels=``, else the module's ``labels`` attribute, else ``"0"``,
    ``"1"``, ...; the task from ``task=``, else the module's ``task``, else the shape of the targets
    (``(batch, labels)`` multi-hot: multi-label). Subgroups come from the data module's
    ``test_groups()`` (one name per test row, in dataset order), matched to the predictions by
    dataset index; this needs a map-style test set served in a fixed order (the usual test loader).

    Args:
        dirpath: Folder of the files (default: the trainer's ``log_dir``).
        labels: Class names in class-index order.
        task: ``"multiclass"`` or ``"multilabel"`` (default: from the module / targets).
        threshold: Probability from which a label counts as predicted (multi-label).
        plot: Draw ``confusion_matrix.png`` (needs matplotlib).
        log: Log ``test/f1/<class>`` (up to 100 classes) and ``test_group/<group>/acc|f1`` from rank 0.
        groups: Report per subgroup when the data module has ``test_groups()``.
        tensorboard: Log the confusion matrix picture to TensorBoard loggers.
        input_fn: Extracts the inputs from a batch for the fallback forward.

    Example:
        >>> from tl_lightning.diagnostics import PerClassReport
        >>> cb = PerClassReport(dirpath="outputs/run1")
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        labels: Sequence[str] | None = None,
        task: Task | None = None,
        threshold: float = 0.5,
        plot: bool = True,
        log: bool = True,
        groups: bool = True,
        tensorboard: bool = True,
        input_fn: InputFn | None = None,
    ) -> None:
        super().__init__()
        if task is not None:
            check_choice("task", task, ("multiclass", "multilabel"))
        if labels is not None and isinstance(labels, str):
            raise ConfigurationError(f"labels must be a list of class names, got the string {labels!r}")
        if plot:
            require_matplotlib("PerClassReport", "or PerClassReport(plot=False) for the CSV files only")
        self.dirpath = None if dirpath is None else str(dirpath)
        self.labels = None if labels is None else [str(x) for x in labels]
        self.task: Task | None = task
        self.threshold = check_fraction("threshold", threshold)
        self.plot = bool(plot)
        self.log_metrics = bool(log)
        self.use_groups = bool(groups)
        self.tensorboard = bool(tensorboard)
        self.input_fn = input_fn
        #: results of the last test: report rows, per-group report rows, confusion matrix, files written
        self.report: list[dict[str, Any]] = []
        self.group_reports: dict[str, list[dict[str, Any]]] = {}
        self.confusion: Tensor | None = None
        self.files: list[Path] = []
        self._dir: Path | None = None
        self._reset()

    def _reset(self) -> None:
        self._preds: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._indices: list[Tensor] = []
        self._order: list[int] | None = None
        self._offset = 0
        self._task: Task | None = self.task
        self._warned_loaders = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "test":
            self._dir = resolve_dir(trainer, self.dirpath)  # every rank: trainer.log_dir broadcasts

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        loaders = trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        self._order = _served_indices(loader)

    def _outputs(self, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> tuple[Tensor, Tensor, str]:
        if isinstance(outputs, Mapping) and "targets" in outputs:
            for key in ("preds", "probs", "logits"):
                if isinstance(outputs.get(key), Tensor):
                    return outputs[key].detach(), outputs["targets"].detach(), key
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor)):
            raise ConfigurationError(
                f"PerClassReport needs predictions and targets: return {{'logits': ..., 'targets': ...}} from "
                f"{type(pl_module).__name__}.test_step, or use (inputs, targets) test batches (got "
                f"{type(batch).__name__})"
            )
        inputs = batch_inputs(batch, self.input_fn)
        with torch.no_grad():
            logits = pl_module(inputs)
        return logits.detach(), batch[1].detach(), "logits"

    def _to_preds(self, values: Tensor, kind: str, targets: Tensor, pl_module: pl.LightningModule) -> Tensor:
        if self._task is None:
            task = getattr(pl_module, "task", None)
            if task in ("multiclass", "multilabel"):
                self._task = task
            else:
                multi = targets.ndim == 2 and values.ndim == 2 and targets.shape == values.shape
                self._task = "multilabel" if multi else "multiclass"
        if self._task == "multiclass":
            return values.long() if kind == "preds" else values.argmax(-1)
        if kind == "preds":
            return values.long()
        probs = values.float() if kind == "probs" else values.float().sigmoid()
        return (probs >= self.threshold).long()

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0:
            if not self._warned_loaders:
                self._warned_loaders = True
                rank_zero_warn(
                    "PerClassReport reports on the first test dataloader only; the others are left out"
                )
            return
        values, targets, kind = self._outputs(pl_module, outputs, batch)
        preds = self._to_preds(values, kind, targets, pl_module)
        n = int(preds.shape[0])
        if self._order is not None and self._offset + n <= len(self._order):
            index = torch.tensor(self._order[self._offset : self._offset + n], dtype=torch.long)
        else:
            self._order = None
            index = torch.full((n,), -1, dtype=torch.long)
        self._offset += n
        self._preds.append(preds.cpu())
        self._targets.append(targets.long().cpu())
        self._indices.append(index)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._preds:
            return
        device = pl_module.device
        preds = gather_rows(trainer, torch.cat(self._preds), device)
        targets = gather_rows(trainer, torch.cat(self._targets), device)
        indices = gather_rows(trainer, torch.cat(self._indices), device)
        known = bool((indices >= 0).all())
        if known:
            # DistributedSampler pads the last batches with repeated samples: count every sample once
            order = torch.argsort(indices, stable=True)
            indices, preds, targets = indices[order], preds[order], targets[order]
            first = torch.ones_like(indices, dtype=torch.bool)
            first[1:] = indices[1:] != indices[:-1]
            indices, preds, targets = indices[first], preds[first], targets[first]
        labels = self._labels(pl_module, preds)
        self.report, self.confusion = self._report(preds, targets, labels)
        self.group_reports = {}
        groups = self._groups(trainer, indices if known else None)
        if groups is not None:
            for name in sorted(set(groups)):
                mask = torch.tensor([g == name for g in groups], dtype=torch.bool)
                self.group_reports[name] = self._report(preds[mask], targets[mask], labels)[0]
        if trainer.is_global_zero:
            self._write(trainer, labels)
            if self.log_metrics:
                self._log(pl_module, labels)

    # ----------------------------------------------------------------- pieces
    def _labels(self, pl_module: pl.LightningModule, preds: Tensor) -> list[str]:
        if self.labels is not None:
            return list(self.labels)
        own = getattr(pl_module, "labels", None)
        if isinstance(own, (list, tuple)) and own:
            return [str(x) for x in own]
        count = int(preds.shape[1]) if preds.ndim == 2 else int(preds.max()) + 1 if preds.numel() else 0
        return [str(i) for i in range(count)]

    def _report(
        self, preds: Tensor, targets: Tensor, labels: Sequence[str]
    ) -> tuple[list[dict[str, Any]], Tensor | None]:
        if self._task == "multilabel":
            return multilabel_report(preds, targets, labels), None
        cm = confusion_matrix(preds, targets, len(labels))
        return report_from_confusion(cm, labels), cm

    def _groups(self, trainer: pl.Trainer, indices: Tensor | None) -> list[str] | None:
        if not self.use_groups:
            return None
        source = getattr(trainer, "datamodule", None)
        method = getattr(source, "test_groups", None)
        names = method() if callable(method) else None
        if names is None:
            return None
        if indices is None:
            rank_zero_warn(
                "PerClassReport: the data module gives test subgroups, but the test rows cannot be matched to them (the "
                "test loader has no fixed order, or is an iterable dataset); per_group.csv is not written"
            )
            return None
        return [str(names[int(i)]) if str(names[int(i)]) else "(empty)" for i in indices]

    def _write(self, trainer: pl.Trainer, labels: Sequence[str]) -> None:
        assert self._dir is not None
        columns = list(COLUMNS) + (["tp", "fp", "fn", "tn"] if self._task == "multilabel" else [])
        self.files = [_write_csv(self._dir / "per_class.csv", self.report, columns)]
        if self.confusion is not None:
            path = self._dir / "confusion_matrix.csv"
            with path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["true \\ predicted", *labels])
                for label, row in zip(labels, self.confusion.tolist()):
                    writer.writerow([label, *row])
            self.files.append(path)
            if self.plot:
                png = plot_confusion_matrix(self.confusion, labels, self._dir / "confusion_matrix.png")
                self.files.append(png)
                if self.tensorboard:
                    log_image(trainer, "diagnostics/confusion_matrix", png, trainer.global_step)
        if self.group_reports:
            rows = [{"group": g, **row} for g, report in self.group_reports.items() for row in report]
            self.files.append(_write_csv(self._dir / "per_group.csv", rows, ["group", *columns]))
        rank_zero_info(f"[PerClassReport] wrote {', '.join(p.name for p in self.files)} to {self._dir}")

    def _log(self, pl_module: pl.LightningModule, labels: Sequence[str]) -> None:
        if len(labels) <= _MAX_LOGGED_CLASSES:
            for row in self.report[: len(labels)]:
                pl_module.log(f"test/f1/{row['label']}", row["f1"], rank_zero_only=True)
        for group, report in self.group_reports.items():
            by_label = {r["label"]: r for r in report}
            if "accuracy" in by_label:
                pl_module.log(f"test_group/{group}/acc", by_label["accuracy"]["f1"], rank_zero_only=True)
            pl_module.log(f"test_group/{group}/f1", by_label["macro avg"]["f1"], rank_zero_only=True)
