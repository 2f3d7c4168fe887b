"""Run curves: each param group's LR at every optimizer step, and the epoch metrics, recorded and drawn.

:class:`RunCurves` records what :class:`~tl_lightning.diagnostics.LayerMap` draws at the end of a
run as ``lr_curves.png`` and ``curves.png``. The LR is read by an optimizer step pre-hook
registered when training starts, after the fine-tuning callbacks installed theirs, so it is the
LR the step really used (warm-up after an unfreeze and phase LR scales included); a step the
AMP grad scaler skips is not recorded, because it did not happen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.optim import Optimizer

from tl_lightning.diagnostics._output import new_figure, save_figure

__all__ = ["RunCurves", "plot_lr_curves", "plot_metric_curves"]

_SPLIT_KEY = re.compile(r"^(train|val|test)[/_](.+)$")


def _split_metric(key: str) -> tuple[str, str] | None:
    """``"val/acc"`` -> ``("val", "acc")``; step-level duplicates (``*_step``) and non-split keys -> None."""
    match = _SPLIT_KEY.match(key)
    if match is None or key.endswith("_step"):
        return None
    split, name = match.groups()
    return split, name.removesuffix("_epoch")


class RunCurves:
    """Per-step LRs of every param group and per-epoch metrics of every split.

    Attributes:
        lrs: ``{param group name: [[step, lr], ...]}``.
        metrics: ``{"train/acc": [[epoch, value], ...], ...}``.
    """

    def __init__(self) -> None:
        self.lrs: dict[str, list[list[float]]] = {}
        self.metrics: dict[str, list[list[float]]] = {}
        self._handles: list[Any] = []

    # -- learning rates ---------------------------------------------------------------------
    def install(self, optimizers: Sequence[Optimizer], step: Any) -> None:
        """Record every param group's LR at each ``optimizer.step`` (``step()`` gives the step index)."""
        self.remove()
        several = len(optimizers) > 1

        def hook_for(k: int) -> Any:
            def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
                now = int(step())
                for i, pg in enumerate(opt.param_groups):
                    name = str(pg.get("name", f"pg{i}"))
                    name = f"opt{k}/{name}" if several else name
                    series = self.lrs.setdefault(name, [])
                    if series and series[-1][0] == now:
                        series[-1][1] = float(pg["lr"])
                    else:
                        series.append([now, float(pg["lr"])])

            return hook

        for k, opt in enumerate(optimizers):
            self._handles.append(opt.register_step_pre_hook(hook_for(k)))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- metrics ---------------------------------------------------------------------------
    def record_metrics(self, epoch: int, metrics: Mapping[str, Any], splits: Sequence[str]) -> None:
        """Record the scalar metrics of ``splits`` (``"train"``, ``"val"``) at ``epoch``."""
        for key, value in metrics.items():
            parsed = _split_metric(key)
            if parsed is None or parsed[0] not in splits:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError, RuntimeError):  # non-scalar tensors
                continue
            name = f"{parsed[0]}/{parsed[1]}"
            series = self.metrics.setdefault(name, [])
            if series and series[-1][0] == epoch:
                series[-1][1] = number
            else:
                series.append([int(epoch), number])

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "lrs": {k: [list(p) for p in v] for k, v in self.lrs.items()},
            "metrics": {k: [list(p) for p in v] for k, v in self.metrics.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lrs = {str(k): [list(p) for p in v] for k, v in (state.get("lrs") or {}).items()}
        self.metrics = {str(k): [list(p) for p in v] for k, v in (state.get("metrics") or {}).items()}


def plot_lr_curves(lrs: Mapping[str, Sequence[Sequence[float]]], path: Path) -> Path:
    """Draw each param group's LR over optimizer steps; ``<group>/no_decay`` twins with the same curve are merged."""
    fig = new_figure(9, 5)
    ax = fig.add_subplot(1, 1, 1)
    drawn: dict[str, tuple] = {}
    for name, series in lrs.items():
        values = tuple((float(s), float(v)) for s, v in series)
        base = name.split("/no_decay")[0]
        if name.endswith("/no_decay") and drawn.get(base) == values:
            continue
        drawn[name] = values
        if values:
            steps, lr = zip(*values)
            ax.plot(steps, lr, label=name, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate of each param group")
    if drawn:
        ax.legend(fontsize=7, ncol=2 if len(drawn) > 8 else 1, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_metric_curves(metrics: Mapping[str, Sequence[Sequence[float]]], path: Path) -> Path:
    """One panel per metric (loss first), a line per split, over epochs."""
    from matplotlib.ticker import MaxNLocator

    by_name: dict[str, dict[str, Sequence[Sequence[float]]]] = {}
    for key, series in metrics.items():
        split, _, name = key.partition("/")
        by_name.setdefault(name, {})[split] = series
    names = sorted(by_name, key=lambda n: (n != "loss", n))
    cols = max(1, min(3, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = new_figure(4.5 * cols, 3.4 * rows)
    if not names:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no train / val metrics were logged", ha="center", va="center")
        ax.set_axis_off()
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        for split, series in sorted(by_name[name].items()):
            if series:
                epochs, values = zip(*series)
                ax.plot(epochs, values, marker="o", markersize=3, label=split)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
