"""2-process CPU DDP: the diagnostics run without deadlock; per-class numbers cover the whole test set once."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from diagnostics_models import ScriptedModule, vector_loader
from test_diagnostics_reports import OneHotModel, one_hot_loader

from tl_lightning.diagnostics import ForgettingMonitor, InputCheck, LayerMap, PerClassReport

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def _trainer(tmp_path: Path, callbacks: list, **kw: object) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        **kw,
    )


def test_ddp_per_class_report_counts_every_test_sample_once(tmp_path: Path) -> None:
    # 9 samples on 2 ranks: DistributedSampler pads rank 1 with a repeat of sample 0
    preds = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2])
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 0, 2, 2])
    _trainer(tmp_path, [PerClassReport(dirpath=tmp_path / "ddp", plot=False)], logger=False).test(
        OneHotModel(), one_hot_loader(preds, targets, batch_size=2)
    )
    single = PerClassReport(dirpath=tmp_path / "single", plot=False)
    pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, callbacks=[single]
    ).test(OneHotModel(), one_hot_loader(preds, targets, batch_size=2))
    read = [list(csv.reader((tmp_path / d / "per_class.csv").open())) for d in ("ddp", "single")]
    assert read[0] == read[1]
    support = {row[0]: row[4] for row in read[0][1:]}
    assert support["accuracy"] == "9" and (support["a"], support["b"], support["c"]) == ("4", "2", "3")


def test_ddp_forgetting_monitor_and_layer_map_run_on_rank_zero(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    callbacks = [
        InputCheck(),
        ForgettingMonitor(groups="model", train_metric="train/loss", mode="min"),
        LayerMap(dirpath=tmp_path / "maps"),
    ]
    module = ScriptedModule(lr=0.1)
    _trainer(tmp_path, callbacks, logger=CSVLogger(tmp_path, name="csv", version="")).fit(
        module, vector_loader(n=32, batch_size=4), vector_loader(n=16, batch_size=4)
    )
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    drift = [float(r["forgetting/drift/block3"]) for r in rows if r.get("forgetting/drift/block3")]
    assert len(drift) == 2 and 0 < drift[0] < drift[1]
    assert next(float(r["forgetting/cka/stem"]) for r in rows if r.get("forgetting/cka/stem")) < 1.0
    pictures = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert pictures == ["curves.png", "layer_map_0_0.png", "layer_map_2_8.png", "lr_curves.png"]
