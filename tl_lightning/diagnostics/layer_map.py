"""LayerMap: a picture of the layer groups, input to output, at every unfreeze event and at the end.

Each layer group is a box whose length grows with its parameter count (labelled with the count),
coloured by state: frozen, trainable, partly frozen (e.g. only its norm layers train), head. The
group's current LR and its drift from the starting weights (``||w - w0|| / ||w0||``) stand
beside it. At the end of the run the callback also draws ``lr_curves.png`` (every param group's
LR over optimizer steps) and ``curves.png`` (train / val loss and metrics per epoch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from tl_lightning._targets import FineTuneTargets, GroupsSpec, HeadSpec, resolve_targets, shared_groups
from tl_lightning.describe import table_of
from tl_lightning.diagnostics._drift import WeightDrift
from tl_lightning.diagnostics._output import (
    log_image,
    new_figure,
    require_matplotlib,
    resolve_dir,
    save_figure,
)
from tl_lightning.diagnostics.curves import RunCurves, plot_lr_curves, plot_metric_curves

__all__ = ["STATE_COLORS", "LayerMap", "draw_layer_map"]

#: box colour of each state (RGB hex), also the legend's
STATE_COLORS = {
    "frozen": "#a6a6a6",
    "trainable": "#2f6fb5",
    "partly frozen": "#9cc3e6",
    "head": "#e07b24",
}


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def draw_layer_map(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    title: str = "",
    drift: Mapping[str, float] | None = None,
) -> Path:
    """Draw layer-group rows (input -> output, head last) as a PNG.

    Args:
        rows: Rows as in :class:`~tl_lightning.describe.LayerGroupTable`: ``index`` (``None``
            for the head), ``name``, ``params``, ``state``, ``lr``.
        path: Where the PNG goes.
        title: Title line.
        drift: Relative weight change per group name.

    Returns:
        ``path``.
    """
    from matplotlib.patches import Patch, Rectangle

    drift = drift or {}
    n = len(rows)
    fig = new_figure(10, 1.4 + 0.42 * (n + 1))
    ax = fig.add_axes((0.03, 0.1, 0.94, 0.78))
    largest = max((int(r["params"]) for r in rows), default=1) or 1
    width = 0.56  # the longest box; the LR / drift column starts after it
    for i, r in enumerate(rows):
        y = n - 1 - i  # input at the top, head at the bottom
        state = "head" if r["index"] is None else str(r["state"])
        share = int(r["params"]) / largest
        length = width * max(0.04, math.sqrt(share))  # sqrt: a 100x smaller group is still visible
        ax.add_patch(
            Rectangle(
                (0.0, y + 0.12), length, 0.76, facecolor=STATE_COLORS.get(state, "#ffffff"), edgecolor="none"
            )
        )
        prefix = "" if r["index"] is None else f"{r['index']}  "
        label = f"{prefix}{r['name']}  ({_count(int(r['params']))} params)"
        inside = length > 0.33
        ax.text(
            0.01 if inside else length + 0.01,
            y + 0.5,
            label,
            va="center",
            ha="left",
            fontsize=8,
            color="white" if inside and state in ("trainable", "head") else "black",
        )
        group_drift = drift.get(str(r["name"]))
        side = f"lr {r['lr'] or '-'}"
        if r["index"] is not None:
            side += "   drift " + (
                f"{group_drift:.3g}" if group_drift is not None and math.isfinite(group_drift) else "-"
            )
        ax.text(width + 0.03, y + 0.5, side, va="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.2, n + 0.2)
    ax.set_axis_off()
    ax.annotate("input", (0.0, n + 0.1), fontsize=8, color="#555555", annotation_clip=False)
    ax.annotate("output", (0.0, -0.35), fontsize=8, color="#555555", annotation_clip=False)
    ax.annotate(
        "box length ~ sqrt(parameter count)",
        (1.0, -0.35),
        fontsize=7,
        color="#777777",
        ha="right",
        annotation_clip=False,
    )
    handles = [Patch(facecolor=c, label=s) for s, c in STATE_COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


class LayerMap(Callback):
    """Draw the layer groups (frozen / trainable / head, LR, drift) whenever the trainable set changes, and at the end.

    A picture ``layer_map_<epoch>_<step>.png`` is written when training starts, after every
    unfreeze event (the set of trainable groups differs from the last picture's; checked at
    every training batch start and end, so any unfreezing callback is seen) and at the end of
    training, into ``dirpath`` (default: the trainer's ``log_dir``, i.e. the first logger's
    folder, else ``default_root_dir``). Each is also logged as an image to every attached
    TensorBoardLogger (tag ``diagnostics/layer_map``). At the end, ``lr_curves.png`` and
    ``curves.png`` are written too. Works on any LightningModule whose layer groups are found
    (``groups=`` as for the fine-tuning callbacks). Rank 0 draws; no collective is involved.

    The drift beside each group comes from a :class:`~tl_lightning.diagnostics.ForgettingMonitor`
    of the same Trainer when there is one; otherwise (``track_drift=True``) the callback keeps
    its own copy of the starting weights on the CPU, in its checkpoint state. Under a strategy
    that shards the weights (FSDP), reading them on rank 0 alone is not possible: the maps are
    drawn without drift (said once in the log).

    Args:
        dirpath: Folder of the pictures.
        groups: Where the layer groups are (shared with the other tl_lightning callbacks).
        head: Layer groups that belong to the head.
        tensorboard: Log the layer maps to TensorBoard loggers.
        curves: Write ``lr_curves.png`` and ``curves.png`` at the end.
        track_drift: Show each group's drift (needs a copy of the starting weights).
        state_key: Distinguishes two instances in one Trainer.

    Example:
        >>> from tl_lightning.diagnostics import LayerMap
        >>> cb = LayerMap(dirpath="outputs/run1")
    """

    shares_layer_groups = True

    def __init__(
        self,
        dirpath: str | Path | None = None,
        groups: GroupsSpec = None,
        head: HeadSpec = "auto",
        tensorboard: bool = True,
        curves: bool = True,
        track_drift: bool = True,
        state_key: str | None = None,
    ) -> None:
        super().__init__()
        require_matplotlib("LayerMap")
        self.dirpath = None if dirpath is None else str(dirpath)
        self.groups = groups
        self.head = head
        self.tensorboard = bool(tensorboard)
        self.draw_curves = bool(curves)
        self.track_drift = bool(track_drift)
        self._key = state_key
        #: the PNG files written so far, in order
        self.pictures: list[Path] = []
        self.curves = RunCurves()
        self._drift = WeightDrift("cpu")
        self._last: list[str] | None = None  # trainable-state signature of the last picture (checkpointed)
        self._targets: FineTuneTargets | None = None
        self._dir: Path | None = None
        self._rank_zero = True
        self._monitor: Any = None
        self._trainer: pl.Trainer | None = None
        self._sharded = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key=self._key, groups=str(self.groups))

    @override
    def state_dict(self) -> dict[str, Any]:
        if not self._rank_zero:
            return {}
        return {"last": self._last, "curves": self.curves.state_dict(), "w0": self._drift.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._rank_zero or not state_dict:
            return
        self._last = state_dict.get("last")
        self.curves.load_state_dict(state_dict.get("curves") or {})
        module = self._trainer.lightning_module if self._trainer is not None else None
        self._drift.load_state_dict(state_dict.get("w0") or {}, module)

    # ----------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._targets = resolve_targets(pl_module, shared_groups(trainer, self, self.groups), self.head)
        self._dir = resolve_dir(trainer, self.dirpath)  # every rank: trainer.log_dir broadcasts
        self._rank_zero = trainer.is_global_zero
        self._trainer = trainer
        from tl_lightning.diagnostics.forgetting import ForgettingMonitor

        self._monitor = next((cb for cb in trainer.callbacks if isinstance(cb, ForgettingMonitor)), None)
        self._sharded = not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        if self._sharded and self.track_drift:
            rank_zero_info(
                f"[LayerMap] {type(trainer.strategy).__name__} shards the weights: the layer maps show no drift"
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            self._rank_zero
            and self.track_drift
            and not self._sharded
            and self._monitor is None
            and not self._drift
        ):
            self._drift.snapshot(pl_module.named_parameters())

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after on_fit_start: the LR factors of the unfreezing callbacks are already hooked in, so this hook sees them
        if self._rank_zero and self.draw_curves:
            self.curves.install(trainer.optimizers, lambda: trainer.global_step)

    def _signature(self) -> list[str]:
        assert self._targets is not None
        out = []
        for g in self._targets.groups:
            flags = {p.requires_grad for p in g.parameters()}
            out.append("trainable" if flags == {True} else "frozen" if flags == {False} else "partly frozen")
        return out

    def _maybe_draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._rank_zero or self._targets is None:
            return
        signature = self._signature()
        if signature != self._last:
            self._last = signature
            self.draw(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._maybe_draw(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._maybe_draw(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rank_zero and self.draw_curves:
            self.curves.record_metrics(trainer.current_epoch, trainer.callback_metrics, ("train",))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rank_zero and self.draw_curves and not trainer.sanity_checking:
            self.curves.record_metrics(trainer.current_epoch, trainer.callback_metrics, ("val",))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._rank_zero or self._targets is None:
            return
        self._last = self._signature()
        self.draw(trainer, pl_module)
        if self.draw_curves:
            assert self._dir is not None
            self.pictures.append(plot_lr_curves(self.curves.lrs, self._dir / "lr_curves.png"))
            self.pictures.append(plot_metric_curves(self.curves.metrics, self._dir / "curves.png"))
            rank_zero_info(f"[LayerMap] wrote lr_curves.png and curves.png to {self._dir}")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.curves.remove()

    # ----------------------------------------------------------------- drawing
    def _drift_now(self, pl_module: pl.LightningModule) -> dict[str, float]:
        if self._sharded or not self.track_drift:
            return {}
        if self._monitor is not None:
            return self._monitor.weight_drift(pl_module)
        if self._drift and self._targets is not None:
            return self._drift.measure(pl_module, self._targets.groups)
        return {}

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """Write (and log) the layer map of the current state; returns the PNG's path."""
        assert self._targets is not None and self._dir is not None
        epoch, step = trainer.current_epoch, trainer.global_step
        table = table_of(self._targets, pl_module, list(trainer.optimizers or []))
        trainable = sum(1 for r in table.rows if r["index"] is not None and r["state"] == "trainable")
        with torch.no_grad():
            drift = self._drift_now(pl_module)
        title = (
            f"{type(pl_module).__name__}, epoch {epoch}, step {step}: {trainable}/{len(self._targets.groups)} "
            "layer groups trainable"
        )
        path = draw_layer_map(table.rows, self._dir / f"layer_map_{epoch}_{step}.png", title, drift)
        self.pictures.append(path)
        if self.tensorboard:
            log_image(trainer, "diagnostics/layer_map", path, step)
        return path
