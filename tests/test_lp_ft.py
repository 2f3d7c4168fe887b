"""LP-FT: phase 1 writes the L-BFGS solution on the frozen (eval-mode) features into the head,
phase 2 trains every layer at the model's small LR from it; resume does not refit; cached-feature
batches are refused; tl-train finetune=lp_ft runs end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from test_features import COLOURS, _image_dm, _images, _trainer

from tl_lightning import GradualUnfreezing, TransferClassifier
from tl_lightning.errors import ConfigurationError
from tl_lightning.features import CachedFeatureDataModule, FeatureExtractor, fit_logistic_regression
from tl_lightning.finetune import LPFT


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    return _images(tmp_path / "images")


class Snapshot(pl.Callback):
    """The head right after phase 1 (LPFT fits in on_fit_start; on_train_start comes after it)."""

    def __init__(self) -> None:
        self.head: dict[str, torch.Tensor] = {}
        self.backbone: dict[str, torch.Tensor] = {}
        self.lrs: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.head = {k: v.detach().clone() for k, v in pl_module.head.state_dict().items()}
        self.backbone = {k: v.detach().clone() for k, v in pl_module.backbone.named_parameters()}
        self.lrs = [g.get("initial_lr", g["lr"]) for g in trainer.optimizers[0].param_groups]


def _model(lr: float = 1e-4) -> TransferClassifier:
    torch.manual_seed(0)
    return TransferClassifier("timm:test_resnet", labels=sorted(COLOURS), pretrained=False, lr=lr,
                              scheduler={"_target_": "torch.optim.lr_scheduler.ConstantLR", "factor": 1.0})


def test_lp_ft_phase1_is_the_lbfgs_solution_and_phase2_trains_everything(images: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm = _image_dm(images, augment=True)  # phase 2 trains on augmented images; phase 1 never sees them
    model = _model(lr=1e-4)
    dm.set_preprocess(model.backbone.preprocess)
    snap = Snapshot()
    lp_ft = LPFT(l2_grid=[1e-2, 1e-1])
    trainer = _trainer(tmp_path, [lp_ft, snap], max_epochs=2)
    trainer.fit(model, dm)

    # phase 1: the logistic-regression solution on the eval-mode features of the unaugmented training split
    fresh = _model()
    extractor = FeatureExtractor(fresh, cache_dir=tmp_path / "check")
    train, val = extractor.split(dm, "train"), extractor.split(dm, "val")
    expected = fit_logistic_regression(train.features, train.targets, num_classes=3, val_features=val.features,
                                       val_targets=val.targets, l2_grid=[1e-2, 1e-1], max_iter=200, scale="global")
    np.testing.assert_allclose(snap.head["fc.weight"].numpy(), expected.weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(snap.head["fc.bias"].numpy(), expected.bias, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "feature_cache").is_dir(), "phase 1 features are cached in the run folder"

    # phase 2: every parameter group at the small LR, and every backbone parameter moved
    assert snap.lrs and all(lr == pytest.approx(1e-4) for lr in snap.lrs)
    moved = {k: not torch.equal(v, dict(model.backbone.named_parameters())[k].detach()) for k, v in snap.backbone.items()}
    assert all(moved.values()), [k for k, m in moved.items() if not m]
    assert not torch.equal(snap.head["fc.weight"], model.head.fc.weight.detach()), "the head trains on too"
    assert lp_ft.state_dict()["phase"] == 2 and lp_ft.state_dict()["fitted"]


@pytest.mark.parametrize("freeze", [True, False])
def test_lp_ft_phase2_keeps_the_pretrained_batchnorm_statistics(images: Path, tmp_path: Path, freeze: bool) -> None:
    """The head was fitted on features normalised with the running statistics: phase 2 keeps them (by default)."""
    pl.seed_everything(0)
    dm = _image_dm(images)
    model = _model(lr=1e-3)
    dm.set_preprocess(model.backbone.preprocess)
    bns = {n: m for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bns
    stats = {n: m.running_mean.clone() for n, m in bns.items()}
    scale = {n: m.weight.detach().clone() for n, m in bns.items()}
    _trainer(tmp_path, [LPFT(l2_grid=[1e-1], freeze_bn_stats=freeze)], max_epochs=2).fit(model, dm)
    same_stats = [torch.equal(stats[n], m.running_mean) for n, m in bns.items()]
    assert all(same_stats) if freeze else not any(same_stats)
    assert not any(torch.equal(scale[n], m.weight.detach()) for n, m in bns.items()), "their scale still trains"


def test_lp_ft_resumes_without_refitting(images: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm = _image_dm(images, augment=False)
    model = _model()
    dm.set_preprocess(model.backbone.preprocess)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[LPFT()])
    trainer.fit(model, dm)
    ckpt = tmp_path / "one.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = LPFT()
    snap = Snapshot()
    model2 = _model()
    trainer2 = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=str(tmp_path / "b"), callbacks=[resumed, snap])
    trainer2.fit(model2, dm, ckpt_path=ckpt)
    assert resumed.fitted and resumed.fit is None, "the head came from the checkpoint, not a new fit"
    torch.testing.assert_close(snap.head["fc.weight"], model.head.fc.weight.detach())
    assert not (tmp_path / "b" / "feature_cache").exists()


def test_lp_ft_refuses_cached_feature_batches(images: Path, tmp_path: Path) -> None:
    dm = _image_dm(images)
    model = _model()
    dm.set_preprocess(model.backbone.preprocess)
    trainer = _trainer(tmp_path, [GradualUnfreezing(preset="all_frozen"), LPFT()])
    with pytest.raises(ConfigurationError, match="cached_features=false"):
        trainer.fit(model, CachedFeatureDataModule(dm))


def test_lp_ft_warns_when_the_backbone_never_trains(images: Path, tmp_path: Path) -> None:
    dm = _image_dm(images, augment=False)
    model = _model()
    dm.set_preprocess(model.backbone.preprocess)
    trainer = _trainer(tmp_path, [GradualUnfreezing(preset="all_frozen"), LPFT()], max_epochs=1)
    with pytest.warns(UserWarning, match="backbone is frozen"):
        trainer.fit(model, dm)
