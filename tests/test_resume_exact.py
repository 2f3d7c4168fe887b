"""Exact resume: a run stopped (at an epoch boundary or mid-epoch) and resumed in its own folder
ends with the same weights, metrics, best checkpoint and metrics.csv as the uninterrupted run,
with random augmentation and dropout on. Plus the pieces: seeded sampler (also split between DDP
ranks), per-sample augmentation seeds, RNG states in checkpoints."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import open_dict
from test_train_app import compose_run
from torch.utils.data import Dataset, TensorDataset

from tl_lightning.callbacks.exact_resume import rng_states, set_rng_states
from tl_lightning.cli._interrupt import RunInterrupted
from tl_lightning.cli.train import train
from tl_lightning.data._sampling import (
    EpochIndex,
    EpochSampler,
    ResumableDataLoader,
    SeededDataset,
    seeded_train_loader,
)
from tl_lightning.modules._checkpoint import read_checkpoint


class SignalAt(pl.Callback):
    """Send ``signum`` to this process after training batch ``batch`` of epoch ``epoch`` (-1: the last one)."""

    def __init__(self, epoch: int, batch: int, signum: int = int(signal.SIGINT)) -> None:
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        last = batch_idx == trainer.num_training_batches - 1
        if trainer.current_epoch == self.epoch and (batch_idx == self.batch or (self.batch == -1 and last)):
            os.kill(os.getpid(), self.signum)


def overrides(image_root: Path) -> list[str]:
    # augmentation on (random resized crop + flip), dropout on, 3 batches per epoch, cosine schedule
    return ["experiment=tiny_image", f"data.root={image_root}", "data.augment=true", "model.head_dropout=0.5",
            "trainer.max_epochs=3", "data.batch_size=4", "test=false", "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false", "~callbacks.early_stopping"]


def run(image_root: Path, out: Path, extra: list[str] = (), signal_at: SignalAt | None = None):
    cfg = compose_run([*overrides(image_root), *extra], out)
    if signal_at is not None:
        with open_dict(cfg):
            cfg.callbacks.signal_at = {"_target_": f"{__name__}.SignalAt", "epoch": signal_at.epoch,
                                       "batch": signal_at.batch, "signum": signal_at.signum}
    return train(cfg)


@pytest.fixture(scope="module")
def straight(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("straight")
    return out, run(image_root, out)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def csv_rows(run_dir: Path, only_val: bool = False) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r.get("val/acc")] if only_val else rows


def assert_same_run(resumed_dir: Path, resumed: Any, straight_dir: Path, reference: Any) -> None:
    a, b = weights(straight_dir), weights(resumed_dir)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert resumed.val_metrics == reference.val_metrics
    assert resumed.best_score == reference.best_score
    assert Path(resumed.best_checkpoint).name == Path(reference.best_checkpoint).name
    assert resumed.epochs == reference.epochs == 3 and resumed.global_step == reference.global_step


def test_resume_at_epoch_boundary_is_exact(image_root: Path, straight: tuple[Path, Any], tmp_path: Path) -> None:
    """Ctrl+C at the end of epoch 0: the run stops before epoch 1 with last.ckpt = end of epoch 0;
    resumed to 3 epochs it equals the uninterrupted run, and metrics.csv holds every row once."""
    straight_dir, reference = straight
    with pytest.raises(RunInterrupted) as stop:
        run(image_root, tmp_path, signal_at=SignalAt(epoch=0, batch=-1))
    assert stop.value.signum == signal.SIGINT and stop.value.exit_code == 130
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 0, "stopped after epoch 0"
    resumed = run(image_root, tmp_path, [f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"])
    assert_same_run(tmp_path, resumed, straight_dir, reference)
    assert csv_rows(tmp_path) == csv_rows(straight_dir), "rows of finished epochs kept, new ones appended, none twice"


def test_resume_mid_epoch_is_exact(image_root: Path, straight: tuple[Path, Any], tmp_path: Path) -> None:
    """SIGTERM after the first batch of epoch 1: last.ckpt is saved there and the resumed run skips
    exactly the batches already trained (same order, same augmentation, same dropout)."""
    straight_dir, reference = straight
    with pytest.raises(RunInterrupted) as stop:
        run(image_root, tmp_path, signal_at=SignalAt(epoch=1, batch=0, signum=int(signal.SIGTERM)))
    assert stop.value.signal_name == "SIGTERM" and stop.value.saved_now and stop.value.exit_code == 143
    saved = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert (saved["epoch"], saved["global_step"]) == (1, 4), "saved after batch 0 of epoch 1"
    resumed = run(image_root, tmp_path, [f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"])
    assert_same_run(tmp_path, resumed, straight_dir, reference)
    # validation rows match; the training aggregate of the resumed epoch covers only its later batches
    assert csv_rows(tmp_path, only_val=True) == csv_rows(straight_dir, only_val=True)


# --- the pieces -----------------------------------------------------------------------------


def test_epoch_sampler_order_depends_on_seed_and_epoch_only() -> None:
    data = TensorDataset(torch.arange(20))

    def order(seed: int, epoch: int) -> list[int]:
        sampler = EpochSampler(data, seed=seed)
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch * 7 + 1)  # the global RNG plays no part
        return [int(i) for i in sampler]

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    assert sorted(order(0, 3)) == list(range(20))
    sampler = EpochSampler(data, seed=0)
    sampler.set_epoch(5)
    assert all(isinstance(i, EpochIndex) and i.epoch == 5 for i in sampler), "indices carry their epoch"


def test_epoch_sampler_splits_the_same_order_between_ranks() -> None:
    """Under DDP each rank takes every other index of the one epoch order: disjoint, covering."""
    data = TensorDataset(torch.arange(11))
    ranks = []
    for rank in range(2):
        sampler = EpochSampler(data, seed=3, num_replicas=2, rank=rank)
        sampler.set_epoch(4)
        ranks.append([int(i) for i in sampler])
    single = EpochSampler(data, seed=3)
    single.set_epoch(4)
    full = [int(i) for i in single]
    assert len(ranks[0]) == len(ranks[1]) == 6, "padded to equal length"
    assert set(ranks[0]) | set(ranks[1]) == set(range(11))
    assert ranks[0][:5] == full[0::2][:5] and ranks[1][:5] == full[1::2][:5]


def test_lightning_keeps_the_epoch_sampler_under_ddp() -> None:
    """Lightning wraps custom samplers in a DistributedSamplerWrapper, but leaves a DistributedSampler alone."""
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    loader = seeded_train_loader(TensorDataset(torch.arange(8)), seed=0, batch_size=2)
    connector = trainer._data_connector
    assert trainer._accelerator_connector.is_distributed
    assert not connector._requires_distributed_sampler(loader)


def test_resumable_loader_continues_after_the_batches_taken() -> None:
    data = TensorDataset(torch.arange(10))
    taken = {"n": 0}
    loader = ResumableDataLoader(SeededDataset(data, 0), sampler=EpochSampler(data, seed=1), batch_size=3,
                                 batches_taken=lambda: taken["n"])
    loader.sampler.set_epoch(2)
    epoch = [b[0].tolist() for b in loader]
    taken["n"] = 2
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 2, "batch_size": 3}
    fresh = ResumableDataLoader(SeededDataset(data, 0), sampler=EpochSampler(data, seed=1), batch_size=3)
    fresh.load_state_dict(state)
    assert [b[0].tolist() for b in fresh] == epoch[2:], "the rest of the same epoch"
    assert len(fresh) == 4, "the length of an epoch does not shrink (Lightning counts batches with it)"
    fresh.sampler.set_epoch(2)
    assert [b[0].tolist() for b in fresh] == epoch, "only the first iteration after a resume skips"


class RandomAugment(Dataset):
    """Returns a draw from torch's and numpy's global RNGs, as random transforms do."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[float, float]:
        return float(torch.rand(())), float(np.random.rand())


def test_augmentation_seeded_per_epoch_and_sample_not_by_the_global_rng() -> None:
    data = SeededDataset(RandomAugment(), seed=7)
    torch.manual_seed(0)
    np.random.seed(0)
    first = data[EpochIndex(2, epoch=1)]
    before = torch.get_rng_state()
    torch.manual_seed(123)
    np.random.seed(123)
    again = data[EpochIndex(2, epoch=1)]
    assert first == again, "same (seed, epoch, index): same augmentation whatever the global RNG"
    assert data[EpochIndex(2, epoch=2)] != first and data[EpochIndex(3, epoch=1)] != first
    state = torch.get_rng_state()
    data[EpochIndex(1, epoch=0)]
    assert torch.equal(torch.get_rng_state(), state), "the caller's RNG is left as it was"
    assert not torch.equal(before, state)


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    states = rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({"rng": states}, tmp_path / "rng.pt")
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]



def test_finished_run_extended_with_more_epochs_is_exact(image_root: Path, tmp_path: Path) -> None:
    """1 epoch, then resumed with trainer.max_epochs=3 (`tl-train --resume <run> trainer.max_epochs=3`),
    equals 3 epochs straight (a constant learning rate: a schedule's length depends on max_epochs)."""
    constant = ["scheduler=constant"]
    reference = run(image_root, tmp_path / "straight", constant)
    run(image_root, tmp_path / "extended", [*constant, "trainer.max_epochs=1"])
    last = tmp_path / "extended" / "checkpoints" / "last.ckpt"
    resumed = run(image_root, tmp_path / "extended", [*constant, f"ckpt_path={last}"])
    assert_same_run(tmp_path / "extended", resumed, tmp_path / "straight", reference)
