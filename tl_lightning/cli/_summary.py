"""The short report printed (and saved as ``summary.json``) at the end of a ``tl-train`` run."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunSummary"]


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


@dataclass
class RunSummary:
    """What a run produced: metrics, time and where the outputs are.

    Example:
        >>> s = RunSummary(task_name="demo", output_dir="outputs/demo/x", test_metrics={"test/acc": 0.76})
        >>> "test/acc" in s.format()
        True
    """

    task_name: str
    output_dir: str
    backbone: str = ""
    labels: list[str] = field(default_factory=list)
    train_seconds: float | None = None
    total_seconds: float | None = None
    epochs: int | None = None
    best_checkpoint: str | None = None
    best_score: float | None = None
    monitor: str | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.val_metrics = _floats(self.val_metrics)
        self.test_metrics = _floats(self.test_metrics)

    def format(self) -> str:
        """Human-readable summary, a dozen lines."""

        def metrics(values: dict[str, float]) -> str:
            shown = {k: v for k, v in sorted(values.items()) if not math.isnan(v)}
            return "  ".join(f"{k}={v:.4f}" for k, v in shown.items()) or "(none)"

        rule = "=" * 72
        lines = [rule, f"tl-train summary: {self.task_name}  ({self.backbone})", rule]
        if self.labels:
            shown = ", ".join(self.labels[:10]) + (", ..." if len(self.labels) > 10 else "")
            lines.append(f"labels ({len(self.labels)}):   {shown}")
        lines.append(f"test metrics:   {metrics(self.test_metrics)}")
        lines.append(f"val metrics:    {metrics(self.val_metrics)}  (last validation)")
        if self.best_score is not None:
            lines.append(f"best {self.monitor}: {self.best_score:.4f}")
        if self.train_seconds is not None:
            epochs = f" ({self.epochs} epochs)" if self.epochs is not None else ""
            lines.append(f"train time:     {self.train_seconds:.1f} s{epochs}")
        if self.total_seconds is not None:
            lines.append(f"total time:     {self.total_seconds:.1f} s (load + train + test)")
        lines.append(f"output dir:     {self.output_dir}")
        lines.append(f"best checkpoint: {self.best_checkpoint or '(none saved)'}")
        if self.best_checkpoint:
            lines.append(
                f"predict with:   tl-predict ckpt_path={self.best_checkpoint} input=<csv or image folder> "
                "output=predictions.csv"
            )
        lines.append(rule)
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        """Write the summary as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")
