"""TransferClassifier: param groups, training, checkpoints, multilabel, errors."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from tl_lightning import ImageFolderDataModule, TransferClassifier
from tl_lightning.errors import CheckpointError, ConfigurationError
from tl_lightning.optim import NO_DECAY_SUFFIX, slanted_triangular, warmup_cosine

BACKBONE = "timm:test_resnet"
COLORS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def _color_folder(root: Path, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """Linearly separable images: the colour is the class (plus noise)."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            px = np.array(rgb)[None, None, :] * 0.75 + rng.integers(0, 64, (size, size, 3))
            Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _random_loader(n: int = 8, num_classes: int = 3, multilabel: bool = False) -> DataLoader:
    x = torch.randn(n, 3, 32, 32)
    y = torch.randint(0, 2, (n, num_classes)) if multilabel else torch.arange(n) % num_classes
    return DataLoader(TensorDataset(x, y), batch_size=4)


def _model(**kwargs) -> TransferClassifier:
    return TransferClassifier(BACKBONE, **{"labels": ["a", "b", "c"], "pretrained": False, **kwargs})


# -- param groups ----------------------------------------------------------------------------
def test_param_groups_names_order_and_layer_decay() -> None:
    model = _model(lr=1e-3, layer_decay=0.5, head_lr=1e-2, weight_decay=0.05)
    opt = model.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    layer_names = model.backbone.layer_group_names()
    L = len(layer_names)
    expected_order = [n for name in layer_names + ["head"] for n in (name, name + NO_DECAY_SUFFIX)]
    names = [g["name"] for g in opt.param_groups]
    assert names == [n for n in expected_order if n in names]  # input -> output, head last
    for i, lg in enumerate(layer_names):
        for g in opt.param_groups:
            if g["layer_group"] == lg:
                assert g["lr"] == pytest.approx(1e-3 * 0.5 ** (L - 1 - i))
    head_groups = [g for g in opt.param_groups if g["layer_group"] == "head"]
    assert {g["name"] for g in head_groups} == {"head", "head/no_decay"}
    assert all(g["lr"] == pytest.approx(1e-2) for g in head_groups)
    # no decay on biases / norms, decay on conv and linear weights
    by_id = {id(p): (n, p) for n, p in model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            name, _ = by_id[id(p)]
            if g["name"].endswith(NO_DECAY_SUFFIX):
                assert g["weight_decay"] == 0.0 and p.ndim <= 1, name
            else:
                assert g["weight_decay"] == 0.05 and p.ndim > 1, name
    # every parameter exactly once
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_every_group_present_with_frozen_backbone() -> None:
    model = _model(layer_decay=0.8)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    opt = model.configure_optimizers()["optimizer"]
    groups = {g["layer_group"] for g in opt.param_groups}
    assert groups == set(model.backbone.layer_group_names()) | {"head"}
    assert model.layer_groups() is model.backbone.layer_groups()


def test_optimizer_partial_and_no_weight_decay() -> None:
    model = _model(optimizer=functools.partial(torch.optim.SGD, momentum=0.9), weight_decay=0.0)
    opt = model.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 0.0 for g in opt.param_groups)
    assert not any(g["name"].endswith(NO_DECAY_SUFFIX) for g in opt.param_groups)


def test_scheduler_partial_uses_trainer_steps_and_keeps_ratios() -> None:
    model = _model(lr=1e-2, layer_decay=0.5, scheduler=functools.partial(slanted_triangular, cut_frac=0.5, ratio=4))
    lrs: list[list[float]] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    trainer = _trainer(max_epochs=2, callbacks=[Record()])
    trainer.fit(model, _random_loader(n=8))  # 2 batches x 2 epochs = 4 steps
    assert len(lrs) == 4
    top = [step[-1] for step in lrs]  # head group, lr 1e-2
    assert top[0] == pytest.approx(1e-2 / 4) and top[2] == pytest.approx(1e-2)  # peak at cut = 2 of 4 steps
    first = lrs[2]
    groups = trainer.optimizers[0].param_groups
    for lr, g in zip(first, groups):
        assert lr == pytest.approx(1e-2 * g["lr_scale"])  # layer-wise ratios kept by the schedule


def test_reduce_on_plateau_gets_monitor() -> None:
    model = _model(scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau), scheduler_interval="epoch")
    trainer = _trainer()
    model.trainer = trainer  # configure_optimizers reads the trainer's step estimate
    cfg = model.configure_optimizers()
    assert cfg["lr_scheduler"]["monitor"] == "val/loss"
    assert cfg["lr_scheduler"]["interval"] == "epoch"


# -- labels and arguments --------------------------------------------------------------------
def test_labels_and_num_classes() -> None:
    assert _model().num_classes == 3 and _model().labels == ["a", "b", "c"]
    m = TransferClassifier(BACKBONE, num_classes=4, pretrained=False)
    assert m.labels == ["0", "1", "2", "3"] and m.hparams.labels == m.labels
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"labels": ["a", "b"], "num_classes": 3}, "does not match"),
        ({"labels": None}, "num_classes or labels"),
        ({"labels": ["a", "a", "b"]}, "duplicates"),
        ({"labels": ["only"]}, "at least 2"),
        ({"task": "regression"}, "task"),
        ({"layer_decay": 1.5}, "layer_decay"),
        ({"optimizer": "adamw"}, "callable"),
        ({"optimizer": {"_target_": "torch.optim.NoSuchOptimizer"}}, "NoSuchOptimizer"),
        ({"scheduler_interval": "batch"}, "scheduler_interval"),
    ],
)
def test_argument_errors(kwargs, fragment) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        _model(**kwargs)


def test_hydra_containers_become_plain() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"labels": ["x", "y"], "kw": {"granularity": "fine"}, "hidden": [8]})
    m = TransferClassifier(BACKBONE, labels=cfg.labels, backbone_kwargs=cfg.kw, head="mlp", head_hidden=cfg.hidden, pretrained=False)
    assert m.hparams.labels == ["x", "y"] and type(m.hparams.backbone_kwargs) is dict
    assert m.backbone.granularity == "fine" and m.head.fc.in_features == 8


# -- training, checkpoints, predict ----------------------------------------------------------
def test_two_epochs_learn_separable_colors(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(
        root=str(_color_folder(tmp_path / "colors")), image_size=32, augment=False, batch_size=6,
        val_fraction=0.25, test_fraction=0.0,
    )
    # moderate LRs: at lr=1e-2 this tiny BN net on 9 validation images flips between runs
    model = TransferClassifier(BACKBONE, labels=dm.labels, pretrained=False, lr=2e-3, head_lr=2e-2)
    dm.set_preprocess(model.backbone.preprocess)
    trainer = _trainer(max_epochs=3)
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    assert set(metrics) >= {"train/loss", "train/acc", "train/f1", "val/loss", "val/acc", "val/f1"}
    assert metrics["val/acc"].item() == 1.0
    assert metrics["val/f1"].item() == 1.0


def test_checkpoint_round_trip_without_weights_file(tmp_path: Path) -> None:
    weights = tmp_path / "trunk.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    model = TransferClassifier(
        BACKBONE, labels=["cat", "dog"], pretrained=True, weights=str(weights),
        optimizer=functools.partial(torch.optim.AdamW, betas=(0.8, 0.99)),
        scheduler=functools.partial(warmup_cosine, warmup_fraction=0.2),
    )
    assert model.backbone.pretrained_source == str(weights)
    trainer = _trainer(max_steps=2)
    trainer.fit(model, _random_loader(num_classes=2))
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    weights.unlink()  # loading must not need the pretrained file any more

    loaded = TransferClassifier.load_from_checkpoint(ckpt)  # default weights_only load
    assert loaded.labels == ["cat", "dog"] and loaded.hparams.labels == ["cat", "dog"]
    assert loaded.hparams.pretrained is False and loaded.hparams.weights is None
    assert model.hparams.pretrained is True  # the live model's hparams are untouched
    x = torch.randn(3, 3, 32, 32)
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # the same optimizer and schedule come back, not a default
    assert loaded.hparams.optimizer == {"_target_": "torch.optim.adamw.AdamW", "betas": [0.8, 0.99]}
    assert loaded.optimizer_factory.func is torch.optim.AdamW
    assert loaded.optimizer_factory.keywords == {"betas": [0.8, 0.99]}
    assert loaded.scheduler_factory.func is warmup_cosine
    assert loaded.scheduler_factory.keywords == {"warmup_fraction": 0.2}
    raw = torch.load(ckpt, weights_only=True)
    assert raw["tl_lightning"]["labels"] == ["cat", "dog"]
    assert raw["tl_lightning"]["pretrained_source"] == str(weights)


def test_checkpoint_label_mismatch_is_an_error(tmp_path: Path) -> None:
    model = _model()
    trainer = _trainer(max_steps=1)
    trainer.fit(model, _random_loader())
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    other = _model(labels=["a", "b", "z"])
    with pytest.raises(CheckpointError, match="labels"):
        other.on_load_checkpoint(torch.load(ckpt, weights_only=True))


def test_predict_returns_probabilities() -> None:
    model = _model()
    trainer = _trainer()
    x = torch.randn(5, 3, 32, 32)
    out = trainer.predict(model, DataLoader(TensorDataset(x), batch_size=2))
    probs = torch.cat(out)
    assert probs.shape == (5, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(probs, model(x).softmax(-1))


def test_multilabel_fit_test_predict() -> None:
    model = _model(task="multilabel", label_smoothing=0.1)
    trainer = _trainer(max_epochs=1, limit_train_batches=2)
    loader = _random_loader(multilabel=True)
    trainer.fit(model, loader, loader)
    assert {"val/loss", "val/acc", "val/f1"} <= set(trainer.callback_metrics)
    result = trainer.test(model, loader, verbose=False)[0]
    assert 0.0 <= result["test/acc"] <= 1.0
    probs = torch.cat(trainer.predict(model, DataLoader(TensorDataset(torch.randn(4, 3, 32, 32)), batch_size=4)))
    assert probs.shape == (4, 3) and ((probs > 0) & (probs < 1)).all()
    assert not torch.allclose(probs.sum(-1), torch.ones(4))  # sigmoid, not softmax
    assert isinstance(model.loss_fn, torch.nn.BCEWithLogitsLoss)


def test_bad_batch_is_reported() -> None:
    model = _model()
    with pytest.raises(ConfigurationError, match="pairs"):
        model.training_step(torch.randn(2, 3, 32, 32), 0)


def test_frozen_backbone_runs_under_no_grad_and_head_still_trains() -> None:
    model = _model()
    grad_enabled_in_trunk: list[bool] = []
    model.backbone.register_forward_hook(lambda *_: grad_enabled_in_trunk.append(torch.is_grad_enabled()))
    x = torch.randn(2, 3, 32, 32, requires_grad=True)  # even an input that wants grad

    model(x).sum().backward()
    assert grad_enabled_in_trunk == [True]
    assert x.grad is not None

    for p in model.backbone.parameters():
        p.requires_grad_(False)
    x.grad = None
    logits = model(x)
    assert grad_enabled_in_trunk == [True, False]
    assert logits.requires_grad
    logits.sum().backward()
    assert x.grad is None, "no graph may be built through a fully frozen trunk"
    assert all(p.grad is not None for p in model.head.parameters())


def test_optimizer_given_as_target_mapping() -> None:
    model = _model(optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "momentum": 0.5}, weight_decay=0.0)
    opt = model.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.5


def test_unrepresentable_partial_is_not_stored() -> None:
    model = _model(optimizer=lambda groups: torch.optim.SGD(groups))
    assert model.hparams.optimizer is None
    assert isinstance(model.configure_optimizers()["optimizer"], torch.optim.SGD)


def test_image_backbones_run_channels_last_and_match_contiguous() -> None:
    fast = _model()
    plain = _model(channels_last=False)
    plain.load_state_dict(fast.state_dict())
    conv = next(p for p in fast.backbone.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(p.is_contiguous() for p in plain.backbone.parameters())
    seen: list[bool] = []
    fast.backbone.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(2, 3, 32, 32)
    fast.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-4, rtol=1e-4)
    assert seen == [True]
