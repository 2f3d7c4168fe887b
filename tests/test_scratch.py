"""finetune=scratch (same architecture, random init, its own LR / epochs), and finetune=l2sp / lora from tl-train."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import timm
import torch
from test_train_app import compose_run

from tl_lightning.cli._errors import ConfigStepError
from tl_lightning.cli.train import train
from tl_lightning.errors import ConfigurationError


@pytest.fixture()
def pretrained_backbone_dir(tmp_path: Path) -> Path:
    """A user config folder with a backbone option whose weights are "pretrained" (a local file)."""
    weights = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    folder = tmp_path / "configs"
    (folder / "backbone").mkdir(parents=True)
    (folder / "backbone" / "local_resnet.yaml").write_text(
        f"name: timm:test_resnet\npretrained: true\nweights: {weights}\nkwargs: {{}}\n"
    )
    return folder


def _overrides(image_root: Path, configs: Path, *extra: str) -> list[str]:
    return [f"hydra.searchpath=[file://{configs}]", "experiment=tiny_image", f"data.root={image_root}",
            "backbone=local_resnet", *extra]


def _model(cfg):  # noqa: ANN001, ANN202
    return hydra.utils.instantiate(cfg.model, labels=["a", "b"], num_classes=2, _convert_="all")


def test_scratch_builds_the_same_architecture_without_pretrained_weights(
    image_root: Path, pretrained_backbone_dir: Path, tmp_path: Path
) -> None:
    pretrained = compose_run(_overrides(image_root, pretrained_backbone_dir), tmp_path / "pre")
    scratch = compose_run(_overrides(image_root, pretrained_backbone_dir, "finetune=scratch"), tmp_path / "scratch")
    assert _model(pretrained).backbone.pretrained_source == str(pretrained_backbone_dir.parent / "resnet.pth")
    model = _model(scratch)
    assert model.backbone.pretrained_source is None
    assert type(model.backbone.model) is type(_model(pretrained).backbone.model)
    assert all(p.requires_grad for p in model.parameters())
    assert scratch.finetune.name == "scratch"


def test_scratch_has_its_own_lr_and_epochs() -> None:
    from omegaconf import OmegaConf

    from tl_lightning.cli import config_dir

    own = OmegaConf.load(config_dir() / "finetune" / "scratch.yaml")
    full = OmegaConf.load(config_dir() / "model" / "transfer_classifier.yaml")
    trainer = OmegaConf.load(config_dir() / "trainer" / "default.yaml")
    assert own.model.lr > full.lr and own.trainer.max_epochs > trainer.max_epochs
    assert own.backbone.pretrained is False


def test_scratch_runs(image_root: Path, pretrained_backbone_dir: Path, tmp_path: Path) -> None:
    cfg = compose_run(_overrides(image_root, pretrained_backbone_dir, "finetune=scratch", "trainer.fast_dev_run=true"),
                      tmp_path)
    summary = train(cfg)
    assert "test/acc" in summary.test_metrics


def test_l2sp_runs_from_tl_train(image_root: Path, pretrained_backbone_dir: Path, tmp_path: Path) -> None:
    cfg = compose_run(_overrides(image_root, pretrained_backbone_dir, "finetune=l2sp", "trainer.max_steps=2",
                                 "trainer.max_epochs=1", "test=false"), tmp_path)
    assert cfg.callbacks.l2sp.alpha == cfg.finetune.alpha
    summary = train(cfg)
    assert summary.global_step == 2


def test_lora_runs_from_tl_train_on_a_vit_and_names_target_modules_for_a_cnn(
    image_root: Path, pretrained_backbone_dir: Path, tmp_path: Path
) -> None:
    vit = ["hydra.searchpath=[]", "experiment=tiny_image", f"data.root={image_root}", "backbone=timm_test_vit",
           "finetune=lora", "trainer.fast_dev_run=true"]
    summary = train(compose_run(vit, tmp_path / "vit"))
    assert "test/acc" in summary.test_metrics
    cnn = _overrides(image_root, pretrained_backbone_dir, "finetune=lora", "trainer.fast_dev_run=true")
    with pytest.raises(ConfigStepError, match=r"finetune.target_modules=.*layer1\.0\.conv1") as info:
        train(compose_run(cnn, tmp_path / "cnn"))
    assert isinstance(info.value.error, ConfigurationError)
    summary = train(compose_run([*cnn, "finetune.target_modules=[conv1]"], tmp_path / "cnn2"))
    assert "test/acc" in summary.test_metrics
