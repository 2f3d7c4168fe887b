"""The short report printed (and saved as ``summary.json``) at the end of a ``tl-train`` run.

Also written when a run stops early: ``status`` is ``"interrupted"`` (a signal; the
checkpoint and the command that continues the run are in it) or ``"failed"`` (an error during
training, e.g. a non-finite loss; ``last.ckpt`` keeps the last good state).
"""

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


def _number(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


@dataclass
class RunSummary:
    """What a run produced: metrics, time, where the outputs are, and how it ended.

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
    #: "completed", "interrupted" (a signal) or "failed" (an error during training)
    status: str = "completed"
    #: the signal ("SIGINT", "SIGTERM") or the error that stopped the run
    stopped_by: str | None = None
    #: optimizer steps done (over every session of a resumed run)
    global_step: int | None = None
    #: the latest state (checkpoints/last.ckpt)
    last_checkpoint: str | None = None
    #: the checkpoint this session resumed from
    resumed_from: str | None = None
    #: the command that continues an interrupted run
    resume_command: str | None = None
    #: parameters that required grad when training ended (a gradual schedule's last phase)
    trainable_params: int | None = None
    #: all of the model's parameters
    total_params: int | None = None

    def __post_init__(self) -> None:
        self.val_metrics = _floats(self.val_metrics)
        self.test_metrics = _floats(self.test_metrics)

    def format(self) -> str:
        """Human-readable summary, a dozen lines."""

        def metrics(values: dict[str, float]) -> str:
            # NaN / inf are shown as such: a diverged run must not look like a quiet one
            return "  ".join(f"{k}={_number(v)}" for k, v in sorted(values.items())) or "(none)"

        rule = "=" * 72
        lines = [rule, f"tl-train summary: {self.task_name}  ({self.backbone})", rule]
        if self.status != "completed":
            lines.append(f"status:         {self.status.upper()} by {self.stopped_by or '?'} at {self._position()}")
        if self.labels:
            shown = ", ".join(self.labels[:10]) + (", ..." if len(self.labels) > 10 else "")
            lines.append(f"labels ({len(self.labels)}):   {shown}")
        lines.append(f"test metrics:   {metrics(self.test_metrics)}")
        lines.append(f"val metrics:    {metrics(self.val_metrics)}  (last validation)")
        if self.best_score is not None:
            lines.append(f"best {self.monitor}: {_number(self.best_score)}")
        if self.train_seconds is not None:
            epochs = f" ({self.epochs} epochs)" if self.epochs is not None else ""
            lines.append(f"train time:     {self.train_seconds:.1f} s{epochs}")
        if self.total_seconds is not None:
            lines.append(f"total time:     {self.total_seconds:.1f} s (load + train + test)")
        lines.append(f"output dir:     {self.output_dir}")
        lines.append(f"best checkpoint: {self.best_checkpoint or '(none saved)'}")
        if self.status != "completed" or self.resumed_from:
            lines.append(f"last checkpoint: {self.last_checkpoint or '(none saved)'}")
        if self.resumed_from:
            lines.append(f"resumed from:   {self.resumed_from}")
        if self.resume_command:
            lines.append(f"resume with:    {self.resume_command}")
        if self.best_checkpoint and self.status == "completed":
            lines.append(
                f"predict with:   tl-predict ckpt_path={self.best_checkpoint} input=<csv or image folder> "
                "output=predictions.csv"
            )
        lines.append(rule)
        return "\n".join(lines)

    def _position(self) -> str:
        where = []
        if self.epochs is not None:
            where.append(f"epoch {self.epochs}")
        if self.global_step is not None:
            where.append(f"step {self.global_step}")
        return ", ".join(where) or "start"

    def save(self, path: str | Path) -> None:
        """Write the summary as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")
