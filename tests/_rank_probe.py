"""A callback for the multi-process CLI tests: each rank writes what it was configured with.

``tl-train ... +callbacks.rank_probe._target_=_rank_probe.RankProbe +callbacks.rank_probe.out=${paths.output_dir}
+callbacks.rank_probe.seen.lr=${model.lr}`` (with ``tests/`` on ``PYTHONPATH``): at fit start every
rank writes ``<out>/rank_probe/rank<r>.json`` with its process id, the values its config resolved
to (``seen``), its model's learning rate and where its Trainer writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class RankProbe(pl.Callback):
    def __init__(self, out: str, seen: dict[str, Any] | None = None) -> None:
        self.out = out
        self.seen = dict(seen or {})

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        folder = Path(self.out) / "rank_probe"
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = trainer.checkpoint_callback
        payload = {
            "pid": os.getpid(),
            "rank": trainer.global_rank,
            "seen": self.seen,
            "out": str(Path(self.out).resolve()),
            "lr": float(pl_module.hparams.lr),
            "root_dir": str(Path(trainer.default_root_dir).resolve()),
            "checkpoint_dir": str(Path(checkpoint.dirpath).resolve()) if checkpoint and checkpoint.dirpath else None,
        }
        (folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(payload, indent=1, sort_keys=True))
