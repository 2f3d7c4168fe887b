"""Every option of every config group composes, its targets import, and the CPU-buildable ones instantiate."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from tl_lightning.cli import config_dir
from tl_lightning.cli._config import prepare_omegaconf

CONF = config_dir()
# Groups chosen with `group=option` on the command line (hydra/ is Hydra's own; launcher below).
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
# Options needing an optional plugin, and the module that provides it.
PLUGINS = {
    ("hparams_search", "optuna"): "optuna",
    ("hydra/launcher", "slurm"): "hydra_plugins.hydra_submitit_launcher",
    ("logger", "mlflow"): "mlflow",
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL_OPTIONS = [(g, o) for g in GROUPS for o in options(g)] + [("hydra/launcher", o) for o in options("hydra/launcher")]


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    prepare_omegaconf()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"], return_hydra_config=True)


def targets(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            value = node._get_node(key)
            if key == "_target_":
                found.append(str(node[key]))
            elif isinstance(value, (DictConfig, ListConfig)) and not value._is_none():
                found.extend(targets(value))
    elif isinstance(node, ListConfig):
        for item in node:
            found.extend(targets(item))
    return found


def test_groups_are_the_documented_ones() -> None:
    expected = {"backbone", "callbacks", "data", "debug", "experiment", "finetune", "hparams_search", "logger",
                "model", "optim", "paths", "scheduler", "trainer"}
    assert expected <= set(GROUPS)
    assert {"cpu", "gpu", "ddp", "ddp_sim", "fsdp", "multinode"} <= set(options("trainer"))
    assert {"adamw", "sgd"} <= set(options("optim"))
    assert {"cosine", "one_cycle", "constant"} <= set(options("scheduler"))
    assert {"csv", "tensorboard", "mlflow"} <= set(options("logger"))
    assert {"fast_dev_run", "overfit"} <= set(options("debug"))
    assert "demo" in options("experiment")


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_option_composes_and_targets_import(group: str, option: str, tmp_path: Path) -> None:
    plugin = PLUGINS.get((group, option))
    if plugin and importlib.util.find_spec(plugin.split(".")[0]) is None:
        pytest.skip(f"{group}={option} needs {plugin} (optional extra)")
    if plugin and plugin.startswith("hydra_plugins") and importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{group}={option} needs {plugin} (optional extra)")
    cfg = compose_train([f"{group}={option}"], tmp_path)
    assert cfg.hydra.runtime.choices[group] == option
    names = targets(cfg)
    assert "tl_lightning.TransferClassifier" in names
    for target in names:
        assert callable(get_method(target)), target
    # everything outside hydra/ resolves, except values the user must give (data.root=???)
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert plain["model"]["backbone"] == "${backbone.name}"
    OmegaConf.resolve(cfg.optim)
    OmegaConf.resolve(cfg.scheduler)
    OmegaConf.resolve(cfg.trainer)


def _params() -> list[dict]:
    return [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.1, "name": "a"},
            {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.01, "name": "head"}]


@pytest.mark.parametrize("option", options("optim"))
def test_optimizers_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"optim={option}"], tmp_path)
    optimizer = instantiate(cfg.optim)(_params())
    assert isinstance(optimizer, torch.optim.Optimizer)
    # the learning rates come from the model's param groups, not from the optim config
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]


@pytest.mark.parametrize("option", options("scheduler"))
def test_schedulers_instantiate(option: str, tmp_path: Path) -> None:
    from tl_lightning.optim import build_scheduler

    cfg = compose_train([f"scheduler={option}"], tmp_path)
    optimizer = torch.optim.SGD(_params(), lr=0.1)
    scheduler = build_scheduler(instantiate(cfg.scheduler), optimizer, 100)
    for _ in range(60):
        optimizer.step()
        scheduler.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert all(lr > 0 for lr in lrs)
    # every group keeps its own scale (layer-wise learning rates survive the schedule)
    assert lrs[0] / lrs[1] == pytest.approx(10.0, rel=1e-3)


@pytest.mark.parametrize("option", [o for o in options("callbacks")])
def test_callbacks_instantiate(option: str, tmp_path: Path) -> None:
    from lightning.pytorch import Callback

    cfg = compose_train([f"callbacks={option}"], tmp_path)
    built = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    assert all(isinstance(c, Callback) for c in built)
    if option == "default":
        from tl_lightning.callbacks import LastAndBestCheckpoint

        kinds = {type(c).__name__ for c in built}
        assert {"LastAndBestCheckpoint", "EarlyStopping", "LearningRateMonitor", "TQDMProgressBar"} <= kinds
        checkpoint = next(c for c in built if isinstance(c, LastAndBestCheckpoint))
        assert checkpoint.monitor == "val/acc" and checkpoint.mode == "max" and checkpoint.save_last
        assert Path(checkpoint.dirpath) == tmp_path / "checkpoints"


@pytest.mark.parametrize("option", options("logger"))
def test_loggers_instantiate(option: str, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import Logger

    module = {"mlflow": "mlflow", "tensorboard": "tensorboard", "many": "tensorboard"}.get(option)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"logger={option} needs {module} (the `loggers` extra)")
    cfg = compose_train([f"logger={option}"], tmp_path)
    built = [instantiate(c) for c in cfg.logger.values()]
    assert built and all(isinstance(lg, Logger) for lg in built)


@pytest.mark.parametrize("option", ["default", "cpu", "ddp_sim"])
def test_cpu_trainers_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"trainer={option}"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer.num_devices == (2 if option == "ddp_sim" else 1)
    assert Path(trainer.default_root_dir) == tmp_path


@pytest.mark.parametrize("option", ["gpu", "ddp", "fsdp", "multinode"])
def test_gpu_trainers_compose(option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"trainer={option}"], tmp_path)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert trainer_cfg["accelerator"] == "gpu"
    if option == "fsdp":
        assert get_method(trainer_cfg["strategy"]["_target_"]).__name__ == "FSDP2Strategy"
    if not torch.cuda.is_available():
        return
    instantiate(cfg.trainer, logger=False)


@pytest.mark.parametrize("option", options("backbone"))
def test_backbone_families_exist(option: str, tmp_path: Path) -> None:
    from tl_lightning.backbones import list_families

    cfg = compose_train([f"backbone={option}"], tmp_path)
    backbone = OmegaConf.to_container(cfg.backbone, resolve=False)
    family = str(backbone["name"]).split(":", 1)[0]
    assert family in list_families()
    assert set(backbone) >= {"name", "pretrained", "weights", "kwargs"}


@pytest.mark.parametrize("option", ["timm_test_resnet", "timm_test_vit"])
def test_tiny_image_models_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"backbone={option}"], tmp_path)
    model = instantiate(cfg.model, labels=["a", "b", "c"])
    assert model.labels == ["a", "b", "c"]
    assert model.hparams.backbone == cfg.backbone.name
    size = model.backbone.preprocess.image_size
    assert model(torch.randn(2, 3, *size)).shape == (2, 3)


def test_tiny_text_model_instantiates(tiny_bert_dir: Path, tmp_path: Path) -> None:
    cfg = compose_train(["backbone=hf_tiny", f"backbone.path={tiny_bert_dir}"], tmp_path)
    assert cfg.backbone.name == f"hf:{tiny_bert_dir}"
    model = instantiate(cfg.model, labels=["neg", "pos"])
    batch = model.backbone.preprocess(["a good movie", "bad"])
    assert model(batch).shape == (2, 2)


def test_rotten_tomatoes_data_instantiates(tmp_path: Path) -> None:
    pytest.importorskip("tl_lightning.assets")
    cfg = compose_train(["data=rotten_tomatoes"], tmp_path)
    datamodule = instantiate(cfg.data)
    assert sorted(datamodule.labels) == ["fresh", "rotten"]


def test_image_folder_data_instantiates(tmp_path: Path) -> None:
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "img" / label / f"{i}.png")
    cfg = compose_train(["data=image_folder", f"data.root={tmp_path / 'img'}"], tmp_path)
    datamodule = instantiate(cfg.data)
    assert list(datamodule.labels) == ["cat", "dog"]


def test_experiment_demo_is_the_documented_recipe(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=demo"], tmp_path)
    choices = cfg.hydra.runtime.choices
    assert choices.backbone == "hf_minilm" and choices.data == "rotten_tomatoes"
    assert cfg.data.max_train_samples == 1000
    assert cfg.trainer.accelerator == "cpu"
    assert OmegaConf.to_container(cfg.backbone, resolve=False)["name"] == "hf:${tl_asset:minilm}"


def test_user_config_dir_overrides_and_adds(tmp_path: Path) -> None:
    """A user's folder on the search path adds options to the shipped groups."""
    user = tmp_path / "user_conf" / "experiment"
    user.mkdir(parents=True)
    (user / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /backbone: timm_test_vit\ntask_name: mine\n"
    )
    cfg = compose_train(["experiment=mine", f"hydra.searchpath=[file://{tmp_path / 'user_conf'}]"], tmp_path)
    assert cfg.task_name == "mine"
    assert cfg.backbone.name == "timm:test_vit"


def test_debug_overfit_disables_early_stopping(tmp_path: Path) -> None:
    cfg = compose_train(["debug=overfit"], tmp_path)
    assert cfg.trainer.overfit_batches == 2
    assert cfg.callbacks.early_stopping is None


def test_model_config_matches_transfer_classifier_signature(tmp_path: Path) -> None:
    import inspect

    from tl_lightning import TransferClassifier

    cfg = compose_train([], tmp_path)
    accepted = set(inspect.signature(TransferClassifier.__init__).parameters) - {"self"}
    with open_dict(cfg):
        keys = {k for k in cfg.model.keys() if not str(k).startswith("_")}
    assert keys <= accepted, keys - accepted


def test_run_keeping_settings_are_on_by_default(tmp_path: Path) -> None:
    """last.ckpt every epoch, metrics.csv continued on resume, run folders claimed, NaN loss stops the run."""
    from hydra.utils import get_class

    from tl_lightning.cli._csv_logger import ResumableCSVLogger
    from tl_lightning.cli._run_folder import RunFolderGuard

    cfg = compose_train([], tmp_path)
    assert isinstance(instantiate(cfg.logger.csv), ResumableCSVLogger)
    assert get_class(cfg.hydra.callbacks.run_folder._target_) is RunFolderGuard
    assert cfg.resume is None and cfg.ckpt_path is None
    assert cfg.model.nonfinite == "error"
