"""``tl-train``: the Hydra training application.

One run: compose the config -> build the data module and read its labels -> build the
:class:`~tl_lightning.TransferClassifier` for those labels -> hand the backbone's preprocessing
to the data module -> ``Trainer.fit`` -> ``Trainer.test`` on the best checkpoint -> print a
summary. The run folder (``outputs/<task_name>/<date>/<time>``) holds ``checkpoints/``,
``csv/metrics.csv``, ``.hydra/`` (the resolved config and overrides), ``labels.json`` and
``summary.json``.

Examples:
    tl-train experiment=demo
    tl-train data.root=/data/pets backbone=timm_convnext_tiny finetune=gradual
    tl-train -m model.lr=1e-4,3e-4 trainer.max_epochs=5
    tl-train --config-dir /my/configs experiment=mine

:func:`train` is the same run as a function of a composed config, for use from Python.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tl_lightning.cli._config import config_dir, prepare_omegaconf
from tl_lightning.cli._errors import config_step, exit_on_user_error
from tl_lightning.cli._summary import RunSummary
from tl_lightning.errors import ConfigurationError

__all__ = ["main", "train"]


def _instantiate_dict(node: DictConfig | None, key: str) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, logger); None entries are skipped."""
    objects: list[Any] = []
    if node is None:
        return objects
    for name, entry in node.items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ConfigurationError(
                f"{key}.{name} must be a config with a `_target_` (or null to disable it), got {entry!r}"
            )
        with config_step(f"{key}.{name}"):
            objects.append(hydra.utils.instantiate(entry, _convert_="all"))
    return objects


def _apply_extras(cfg: DictConfig) -> None:
    import torch

    extras = cfg.get("extras") or {}
    if extras.get("num_threads"):
        torch.set_num_threads(int(extras.num_threads))
    if extras.get("matmul_precision"):
        torch.set_float32_matmul_precision(str(extras.matmul_precision))
    if extras.get("print_config", False):
        _print_config(cfg)


@rank_zero_only
def _print_config(cfg: DictConfig) -> None:
    print(OmegaConf.to_yaml(cfg, resolve=False), flush=True)


@rank_zero_only
def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def train(cfg: DictConfig) -> RunSummary:
    """Run one training (and test) job from a composed ``train.yaml`` config.

    Args:
        cfg: The composed config (from ``tl-train`` or ``hydra.compose``). ``cfg.paths.output_dir``
            must resolve (inside a Hydra app it is the run folder).

    Returns:
        The run's :class:`~tl_lightning.cli._summary.RunSummary` (also saved as ``summary.json``).
    """
    import lightning as L

    start = time.perf_counter()
    _apply_extras(cfg)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    with config_step("data"):
        # plain containers: hyperparameters saved in checkpoints must load with weights_only=True
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
        labels = [str(label) for label in datamodule.labels]

    data_task = "multilabel" if getattr(datamodule, "multilabel", False) else "multiclass"
    if cfg.model.get("task", "multiclass") != data_task:
        raise ConfigurationError(
            f"model.task={cfg.model.get('task')!r} but the data is {data_task} "
            f"(data.label_separator={cfg.data.get('label_separator')!r}). Fix: add model.task={data_task}"
        )
    with config_step(f"model (backbone.name={cfg.backbone.name!r})"):
        model = hydra.utils.instantiate(cfg.model, labels=labels, num_classes=len(labels), _convert_="all")
    with config_step("data"):
        datamodule.set_preprocess(model.backbone.preprocess)

    callbacks = _instantiate_dict(cfg.get("callbacks"), "callbacks")
    loggers = _instantiate_dict(cfg.get("logger"), "logger")
    with config_step("trainer"):
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    _write_json(output_dir / "labels.json", labels)

    train_seconds = None
    val_metrics: dict[str, Any] = {}
    if cfg.get("train", True):
        t0 = time.perf_counter()
        with config_step("trainer.fit"):
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        train_seconds = time.perf_counter() - t0
        val_metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    checkpoint = trainer.checkpoint_callback
    best_ckpt = getattr(checkpoint, "best_model_path", "") or None
    best_score = getattr(checkpoint, "best_model_score", None)
    test_metrics: dict[str, Any] = {}
    if cfg.get("test", True):
        ckpt_path = best_ckpt if cfg.get("train", True) else cfg.get("ckpt_path")
        if ckpt_path is None and cfg.get("train", True) and not trainer.fast_dev_run:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn("no best checkpoint was saved; testing the weights at the end of training")
        with config_step("trainer.test"):
            results = trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
        test_metrics = dict(results[0]) if results else {}

    summary = RunSummary(
        task_name=str(cfg.task_name),
        output_dir=str(output_dir),
        backbone=str(cfg.backbone.name),
        labels=labels,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - start,
        epochs=trainer.current_epoch if cfg.get("train", True) else None,
        best_checkpoint=best_ckpt,
        best_score=float(best_score) if best_score is not None else None,
        monitor=getattr(checkpoint, "monitor", None),
        val_metrics=val_metrics,
        test_metrics=test_metrics,
    )
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        summary.save(output_dir / "summary.json")
        print(summary.format(), flush=True)
    return summary


def _task(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
    except Exception as err:
        exit_on_user_error(err)
        raise
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    value = summary.val_metrics.get(metric, summary.test_metrics.get(metric))
    if metric == summary.monitor and summary.best_score is not None:
        value = summary.best_score
    return value


def main() -> None:
    """Console entry point of ``tl-train`` (Hydra parses ``sys.argv``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prepare_omegaconf()
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(_task)
    app()


if __name__ == "__main__":
    main()
