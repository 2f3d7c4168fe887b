"""``tl-train``: the Hydra training application.

One run: compose the config -> build the data module and read its labels -> build the
:class:`~tl_lightning.TransferClassifier` for those labels -> hand the backbone's preprocessing
to the data module -> ``Trainer.fit`` -> ``Trainer.test`` on the best checkpoint -> print a
summary. The run folder (``outputs/<task_name>/<date>/<time>``, one per run) holds
``checkpoints/`` (the best epoch and ``last.ckpt``, the latest state), ``csv/metrics.csv``,
``.hydra/`` (the resolved config and overrides), ``labels.json`` and ``summary.json`` (how the
run ended).

Before training, the config and the data are checked (``cli/_preflight.py``), so mistakes that
would fail after an epoch, or after training, fail at once with one line. SIGINT / SIGTERM
stop the run at a safe point with a resumable ``last.ckpt`` (``cli/_interrupt.py``);
``tl-train --resume <run folder>`` continues it exactly, in the same folder (``cli/_resume.py``).

Examples:
    tl-train experiment=demo
    tl-train data.root=/data/pets backbone=timm_convnext_tiny finetune=gradual
    tl-train -m model.lr=1e-4,3e-4 trainer.max_epochs=5
    tl-train --config-dir /my/configs experiment=mine
    tl-train --resume outputs/train/2025-06-01/12-00-00 trainer.max_epochs=20

:func:`train` is the same run as a function of a composed config, for use from Python.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tl_lightning.callbacks.exact_resume import ExactResume
from tl_lightning.cli._config import config_dir, prepare_omegaconf
from tl_lightning.cli._csv_logger import ResumableCSVLogger, resume_step_of
from tl_lightning.cli._errors import config_step, exit_on_user_error
from tl_lightning.cli._interrupt import InterruptHandler, RunInterrupted
from tl_lightning.cli._slurm import interrupt_handler, requeued_checkpoint
from tl_lightning.cli._preflight import (
    check_accelerator,
    check_batchnorm_last_batch,
    check_monitored_splits,
    check_target_arguments,
    check_test_split,
    check_train_or_checkpoint,
    check_trainer_numbers,
)
from tl_lightning.cli._resume import expand_resume, resume_command
from tl_lightning.cli._summary import RunSummary
from tl_lightning.errors import CheckpointError, ConfigurationError, TLError
from tl_lightning.features import cached_features_datamodule
from tl_lightning.modules._checkpoint import read_checkpoint
from tl_lightning.modules.classifier import CHECKPOINT_KEY

__all__ = ["main", "train"]


def _instantiate_dict(node: DictConfig | None, key: str) -> dict[str, Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, logger); None entries are skipped."""
    objects: dict[str, Any] = {}
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
            check_target_arguments(entry, f"{key}.{name}")
            objects[str(name)] = hydra.utils.instantiate(entry, _convert_="all")
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


def _source_key(data_cfg: DictConfig, split: str) -> str:
    """The data config key that points at a separate ``split`` source (``data.test_dir`` / ``data.test_path``)."""
    for suffix in ("dir", "path"):
        if f"{split}_{suffix}" in data_cfg:
            return f"data.{split}_{suffix}"
    return f"data.{split}_*"


def _check_data_before_training(
    cfg: DictConfig, datamodule: Any, model: Any, callbacks: dict[str, Any], trainer: Any, do_train: bool, do_test: bool
) -> None:
    with config_step("data"):
        for stage, wanted in (("fit", do_train), ("test", do_test)):
            if wanted:
                datamodule.setup(stage)
        sizes = datamodule.split_sizes()
        if do_test:
            check_test_split(do_test, sizes, cfg.data.get("test_fraction"), _source_key(cfg.data, "test"))
    if not do_train:
        return
    with config_step("callbacks"):
        check_monitored_splits(sizes, callbacks)
    limit = trainer.limit_train_batches
    if sizes.get("train") and (limit is None or (isinstance(limit, float) and limit == 1.0)) and not trainer.overfit_batches:
        with config_step("data"):
            check_batchnorm_last_batch(
                model,
                lambda: next(iter(datamodule.train_dataloader())),
                train_size=sizes["train"],
                batch_size=int(datamodule.batch_size),
                world_size=trainer.world_size,
                drop_last=getattr(datamodule, "drop_last", None),
            )


def _check_resume_fits(saved: dict[str, Any], model: Any, ckpt_path: str) -> None:
    """A checkpoint of another modality is refused before Lightning builds anything around it.

    Args:
        saved: What TransferClassifier stored in the checkpoint (its ``"tl_lightning"`` entry).
        model: The model this run built.
        ckpt_path: The checkpoint, for the message.
    """
    modality = saved.get("modality")
    mine = model.backbone.preprocess.modality
    if modality is not None and modality != mine:
        raise CheckpointError(
            f"ckpt_path={ckpt_path!r} holds a {modality} model ({saved.get('backbone')!r}) but this run builds a "
            f"{mine} model ({model.hparams.backbone!r}). Fix: resume with the checkpoint's backbone and data "
            "(tl-train --resume <run folder> replays them), or start a new run without ckpt_path"
        )


def _resume_hint(output_dir: Path, last: str | None) -> str | None:
    if last is None:
        return None
    if (output_dir / ".hydra" / "overrides.yaml").is_file():
        return resume_command(output_dir)
    return f"the same config with ckpt_path={last}"


def _last_state(trainer: Any) -> tuple[str | None, int, int]:
    """``(last.ckpt, epoch, global step)`` reached by ``fit``.

    Under ``ddp_spawn`` the worker processes train and save; this process's trainer and
    checkpoint callback never see their progress, but ``last.ckpt`` holds it.
    """
    callback = trainer.checkpoint_callback
    last = getattr(callback, "last_model_path", "") or None
    epoch, step = trainer.current_epoch, trainer.global_step
    dirpath = getattr(callback, "dirpath", None)
    if last is None and dirpath and (Path(dirpath) / "last.ckpt").is_file():
        last = str(Path(dirpath) / "last.ckpt")
        saved = read_checkpoint(last)
        if int(saved.get("global_step", 0)) > step:
            try:  # epochs trained, as trainer.current_epoch counts them after fit
                epoch = int(saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
            except (KeyError, TypeError):
                epoch = int(saved.get("epoch", epoch))
            step = int(saved["global_step"])
    return (last if last and Path(last).is_file() else None), epoch, step


def _interrupted(stop: RunInterrupted | None, handler: InterruptHandler, trainer: Any) -> RunInterrupted | None:
    """The interruption of ``fit``, also when Lightning's own handling ended it (second Ctrl+C, SIGTERM)."""
    if stop is not None:
        return stop
    if handler.signum is None:
        return None
    last, epoch, step = _last_state(trainer)
    return RunInterrupted(handler.signum, last, saved_now=False, epoch=epoch, global_step=step)


def train(cfg: DictConfig) -> RunSummary:
    """Run one training (and test) job from a composed ``train.yaml`` config.

    Checks the config and the data before training (one clear error instead of a failure after
    an epoch), trains, tests the best checkpoint and writes ``summary.json``. A run stopped by
    SIGINT / SIGTERM saves ``checkpoints/last.ckpt``, writes ``summary.json`` with status
    ``"interrupted"`` and raises :class:`~tl_lightning.cli._interrupt.RunInterrupted`; an
    error during training writes status ``"failed"`` and propagates.

    Args:
        cfg: The composed config (from ``tl-train`` or ``hydra.compose``). ``cfg.paths.output_dir``
            must resolve (inside a Hydra app it is the run folder).

    Returns:
        The run's :class:`~tl_lightning.cli._summary.RunSummary` (also saved as ``summary.json``).
    """
    import lightning as L

    start = time.perf_counter()
    _apply_extras(cfg)
    if (cfg.get("finetune") or {}).get("name") == "auto":
        from tl_lightning.finetune.auto import resolve_auto_finetune

        # measured, chosen (raced with this function when finetune.search=true), printed: finetune=<choice>
        cfg = resolve_auto_finetune(cfg, run=train)
    do_train, do_test = bool(cfg.get("train", True)), bool(cfg.get("test", True))
    # a requeued SLURM job continues its run from the checkpoint it stopped at (tl_lightning/cli/_slurm.py)
    ckpt_path = cfg.get("ckpt_path") or requeued_checkpoint(cfg.paths.output_dir)
    check_train_or_checkpoint(do_train, ckpt_path)
    resumed: dict[str, Any] | None = None  # what the run needs to know about ckpt_path
    if ckpt_path:
        with config_step("ckpt_path"):
            checkpoint = read_checkpoint(ckpt_path, sharded_ok=True)
        resumed = {
            "global_step": int(checkpoint.get("global_step", 0)),
            "log_step": resume_step_of(checkpoint),
            CHECKPOINT_KEY: dict(checkpoint.get(CHECKPOINT_KEY) or {}),
        }
        del checkpoint
    with config_step("trainer"):
        check_trainer_numbers(cfg.trainer)
        check_accelerator(cfg.trainer)
        check_target_arguments(cfg.trainer, "trainer")
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    with config_step("data"):
        check_target_arguments(cfg.data, "data")
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
        check_target_arguments(cfg.model, "model")
        model = hydra.utils.instantiate(cfg.model, labels=labels, num_classes=len(labels), _convert_="all")
    if resumed is not None and do_train:
        with config_step("ckpt_path"):
            _check_resume_fits(resumed[CHECKPOINT_KEY], model, str(ckpt_path))
    with config_step("data"):
        datamodule.set_preprocess(model.backbone.preprocess)

    callbacks = _instantiate_dict(cfg.get("callbacks"), "callbacks")
    loggers = list(_instantiate_dict(cfg.get("logger"), "logger").values())
    resume_step = resumed["log_step"] if resumed is not None and do_train else None
    for logger in loggers:
        if isinstance(logger, ResumableCSVLogger) and resume_step is not None:
            logger.continue_after(resume_step)
    interrupt = interrupt_handler(output_dir)
    # first, so callbacks drawing random numbers at the same hook see the restored RNG state
    all_callbacks = [ExactResume(), *callbacks.values(), *([interrupt] if do_train else [])]
    with config_step("trainer"):
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=all_callbacks, logger=loggers or False)
    _check_data_before_training(cfg, datamodule, model, callbacks, trainer, do_train, do_test)
    with config_step("data"):  # finetune.cached_features: the head trains on features computed once per split
        datamodule = cached_features_datamodule(datamodule, cfg.get("finetune"))

    _write_json(output_dir / "labels.json", labels)

    def summary(**fields: Any) -> RunSummary:
        checkpoint_cb = trainer.checkpoint_callback
        best_score = getattr(checkpoint_cb, "best_model_score", None)
        last, epochs, step = _last_state(trainer)
        values: dict[str, Any] = dict(
            task_name=str(cfg.task_name),
            output_dir=str(output_dir),
            backbone=str(cfg.backbone.name),
            labels=labels,
            total_seconds=time.perf_counter() - start,
            epochs=epochs if do_train else None,
            global_step=step if do_train else None,
            best_checkpoint=getattr(checkpoint_cb, "best_model_path", "") or None,
            best_score=float(best_score) if best_score is not None else None,
            monitor=getattr(checkpoint_cb, "monitor", None),
            last_checkpoint=last,
            resumed_from=str(ckpt_path) if ckpt_path and do_train else None,
            val_metrics=val_metrics,
            # what tl-compare reports as a strategy's cost next to its train time
            trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            total_params=sum(p.numel() for p in model.parameters()),
        )
        values.update(fields)
        result = RunSummary(**values)
        if trainer.is_global_zero:
            output_dir.mkdir(parents=True, exist_ok=True)
            result.save(output_dir / "summary.json")
        return result

    train_seconds = None
    val_metrics: dict[str, Any] = {}
    if do_train:
        t0 = time.perf_counter()
        stop: RunInterrupted | None = None
        interrupt.bind(trainer)
        interrupt.install()
        try:
            with config_step("trainer.fit"), warnings.catch_warnings():
                if ckpt_path:  # resuming in the run's own folder finds its checkpoints there, as it should
                    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
                trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
        except RunInterrupted as err:
            stop = err
        except SystemExit:
            # Lightning ends a second Ctrl+C (KeyboardInterrupt) with sys.exit(1) and SIGTERM
            # that reached it before our handler with SIGTERMException (exit status 0)
            if interrupt.signum is None:
                raise
        except BaseException as err:
            if interrupt.signum is None:
                # a resume refused before any step leaves the run's summary.json as it was
                if resumed is None or trainer.global_step > resumed["global_step"]:
                    val_metrics.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
                    cause = _root_cause(err)
                    summary(status="failed", stopped_by=f"{type(cause).__name__}: {cause}"[:500],
                            train_seconds=time.perf_counter() - t0)
                raise
            # a signal ended fit in a way reported as an error (ddp_spawn workers); the state
            # reached is in last.ckpt all the same
        finally:
            interrupt.uninstall()
        train_seconds = time.perf_counter() - t0
        val_metrics.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        stop = _interrupted(stop, interrupt, trainer)
        if stop is not None:
            result = summary(
                status="interrupted",
                stopped_by=stop.signal_name,
                epochs=stop.epoch,
                global_step=stop.global_step,
                train_seconds=train_seconds,
                last_checkpoint=stop.checkpoint,
                resume_command=_resume_hint(output_dir, stop.checkpoint),
            )
            if trainer.is_global_zero:
                print(result.format(), flush=True)
            raise stop

    checkpoint_cb = trainer.checkpoint_callback
    best_ckpt = getattr(checkpoint_cb, "best_model_path", "") or None
    test_metrics: dict[str, Any] = {}
    if do_test:
        test_ckpt = best_ckpt if do_train else ckpt_path
        if test_ckpt is None and do_train and not trainer.fast_dev_run:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn("no best checkpoint was saved; testing the weights at the end of training")
        with config_step("trainer.test"):
            results = trainer.test(model=model, datamodule=datamodule, ckpt_path=test_ckpt)
        test_metrics = dict(results[0]) if results else {}

    result = summary(train_seconds=train_seconds, test_metrics=test_metrics)
    if trainer.is_global_zero:
        print(result.format(), flush=True)
    return result


def _root_cause(err: BaseException) -> BaseException:
    """The innermost cause (the library error under Hydra's and config_step's wrappers)."""
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "error", None) or err.__cause__
        if inner is None:
            break
        err = inner
    return err


def _task(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
    except RunInterrupted as stop:
        raise SystemExit(stop.exit_code) from None
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
    """Console entry point of ``tl-train`` (Hydra parses ``sys.argv``; ``--resume <run folder>`` first)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prepare_omegaconf()
    try:
        sys.argv = [sys.argv[0], *expand_resume(sys.argv[1:])]
    except TLError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(_task)
    app()


if __name__ == "__main__":
    main()
