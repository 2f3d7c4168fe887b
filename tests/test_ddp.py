"""2-process CPU DDP: after unfreezing, every rank holds identical weights, equal to a 1-process run.

The model has no BatchNorm in trainable layers (Tanh MLP), so per-rank batch statistics cannot
differ; the data is a fixed tensor set without shuffling, so DistributedSampler gives rank r the
samples r, r+2, ... and each global batch of the 2-process run (2 x 4 samples) is exactly the
batch of 8 consecutive samples of the 1-process run.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_callbacks_models import BoringFT

from tl_lightning.callbacks import GradualUnfreezing, LayerwiseLRDecay

pytestmark = pytest.mark.ddp


class SaveWeights(pl.Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                   self.folder / f"rank{trainer.global_rank}.pt")


class NoSync(GradualUnfreezing):
    """What Lightning's BackboneFinetuning effectively does: unfreeze, never average those grads."""

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        self._sync_enabled = False


def _sched(o, m):
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0 / (1 + 0.1 * s)), "interval": "step"}


def _fit(
    folder: Path,
    devices: int,
    batch_size: int,
    unfreezer=GradualUnfreezing,
    max_epochs: int = 3,
    ckpt_path: Path | None = None,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # SGD + momentum: a smooth update, so the DDP / 1-process float differences stay tiny
    model = BoringFT(lr=0.05, sched=_sched, batch_size=batch_size, n=32, opt="sgd")
    callbacks = [
        LayerwiseLRDecay(0.5, groups="model"),
        unfreezer(groups="model", schedule={1: [-1], 2: "all"}, warmup_steps=2, state_key="u"),
        SaveWeights(folder),
        pl.callbacks.ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0),
    ]
    pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        use_distributed_sampler=False,
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    ).fit(model, ckpt_path=ckpt_path)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_ddp_ranks_identical_after_unfreeze_and_match_single_process(tmp_path):
    _fit(tmp_path / "ddp", devices=2, batch_size=4)
    _fit(tmp_path / "single", devices=1, batch_size=8)
    w0 = torch.load(tmp_path / "ddp" / "rank0.pt")
    w1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert _max_diff(w0, w1) == 0.0
    fresh = BoringFT(lr=0.05, sched=_sched).state_dict()
    assert _max_diff(w0, fresh) > 1e-3  # the whole trunk trained after the unfreeze
    assert float((w0["model.stem.0.weight"] - fresh["model.stem.0.weight"]).abs().max()) > 1e-4
    assert _max_diff(w0, single) < 1e-5


def test_without_grad_sync_the_ranks_drift(tmp_path):
    _fit(tmp_path / "nosync", devices=2, batch_size=4, unfreezer=NoSync)
    w0 = torch.load(tmp_path / "nosync" / "rank0.pt")
    w1 = torch.load(tmp_path / "nosync" / "rank1.pt")
    assert _max_diff(w0, w1) > 1e-4


def test_ddp_resume_after_an_unfreeze_keeps_ranks_identical(tmp_path):
    """Stopped after the first unfreeze and resumed under DDP: the ranks stay identical and the run
    ends where an uninterrupted DDP run ends (groups unfrozen before the resume are in DDP's
    reducer now, the ones unfrozen after it are averaged by the callback)."""
    _fit(tmp_path / "full", devices=2, batch_size=4)
    _fit(tmp_path / "part", devices=2, batch_size=4, max_epochs=2)
    ckpt = tmp_path / "part" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    unfreeze_state = next(v for k, v in state["callbacks"].items() if k.startswith("GradualUnfreezing"))
    assert unfreeze_state["unfrozen"] == ["block3"], "stopped between the two unfreezes"
    _fit(tmp_path / "resumed", devices=2, batch_size=4, max_epochs=3, ckpt_path=ckpt)
    r0 = torch.load(tmp_path / "resumed" / "rank0.pt")
    r1 = torch.load(tmp_path / "resumed" / "rank1.pt")
    full = torch.load(tmp_path / "full" / "rank0.pt")
    assert _max_diff(r0, r1) == 0.0
    assert _max_diff(r0, full) < 1e-5


class RankPlateau(BoringFT):
    """Each rank sees a different validation curve (logged without sync): alone, rank 0 would plateau
    at epoch 1 and rank 1 at epoch 2. The ranks agree on the mean (1.0, 0.75, 0.75, ...): epoch 2."""

    CURVES = {0: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 1: [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]}

    def validation_step(self, batch, batch_idx):
        curve = self.CURVES[self.global_rank]
        self.log("val/score", torch.tensor(curve[min(self.current_epoch, 5)]), on_epoch=True)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(2, 8)), batch_size=2)


def _fit_plateau(folder: Path, max_epochs: int, ckpt_path: Path | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model = RankPlateau(lr=0.05, sched=_sched, batch_size=4, n=32, opt="sgd")
    unfreeze = GradualUnfreezing(
        groups="model", phases=["none", ["block3"], "all"], on_plateau=True, monitor="val/score", patience=1,
        warmup_steps=2, state_key="u",
    )
    pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", use_distributed_sampler=False, max_epochs=max_epochs,
        callbacks=[LayerwiseLRDecay(0.5, groups="model"), unfreeze, SaveWeights(folder),
                   pl.callbacks.ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0)],
        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder,
        num_sanity_val_steps=0,
    ).fit(model, ckpt_path=ckpt_path)


def test_ddp_plateau_phases_agree_across_ranks_and_resume_exactly(tmp_path):
    _fit_plateau(tmp_path / "full", max_epochs=4)
    w0 = torch.load(tmp_path / "full" / "rank0.pt")
    w1 = torch.load(tmp_path / "full" / "rank1.pt")
    assert _max_diff(w0, w1) == 0.0
    state = torch.load(tmp_path / "full" / "last.ckpt", weights_only=False)
    plan = next(v for k, v in state["callbacks"].items() if k.startswith("GradualUnfreezing"))["plan"]
    # the mean plateaus at epoch 2: phase 1 starts at epoch 3, on both ranks (rank 0 alone: epoch 2)
    assert plan["current"] == 1 and plan["current_start"] == 3

    _fit_plateau(tmp_path / "part", max_epochs=2)
    _fit_plateau(tmp_path / "resumed", max_epochs=4, ckpt_path=tmp_path / "part" / "last.ckpt")
    r0 = torch.load(tmp_path / "resumed" / "rank0.pt")
    r1 = torch.load(tmp_path / "resumed" / "rank1.pt")
    assert _max_diff(r0, r1) == 0.0
    assert _max_diff(r0, w0) < 1e-6
