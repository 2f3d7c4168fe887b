"""Checks ``tl-train`` makes before training, so a bad config fails in a second with one line.

Each check raises a :class:`~tl_lightning.errors.TLError` that names the config key, the bad
value, the valid choices and the fix, instead of a traceback after an epoch of training (or
after all of them, for the test split).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from tl_lightning._checks import check_int
from tl_lightning.errors import ConfigurationError, DataError, UnknownNameError, did_you_mean

__all__ = [
    "check_accelerator",
    "check_batchnorm_last_batch",
    "check_monitored_splits",
    "check_target_arguments",
    "check_test_split",
    "check_trainer_numbers",
    "check_train_or_checkpoint",
]

_HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


def _own_parameters(target: Any) -> tuple[list[str], bool]:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return [], True
    names, var_kw = [], False
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return names, var_kw


def _parameters(target: Any) -> tuple[list[str], bool]:
    """Keyword parameter names of a class's ``__init__`` or a function, and whether it takes ``**kwargs``.

    A tl_lightning class whose ``__init__`` passes ``**kwargs`` to its parent
    (``LastAndBestCheckpoint(ModelCheckpoint)``) also takes the parent's arguments. Other
    classes taking ``**kwargs`` may use them for anything: they are not checked.
    """
    if not inspect.isclass(target):
        return _own_parameters(target)
    names: list[str] = []
    for cls in target.__mro__:
        if "__init__" not in vars(cls):
            continue
        if cls is object:
            return names, False
        own, var_kw = _own_parameters(cls.__init__)
        names += [n for n in own if n != "self" and n not in names]
        if not var_kw:
            return names, False
        if not cls.__module__.startswith("tl_lightning."):
            break
    return names, True


def check_target_arguments(node: Any, key: str) -> None:
    """Every key of a ``_target_`` config (and of the ``_target_`` configs inside it) is an argument of its target.

    Raises:
        UnknownNameError: e.g. ``+model.lrr=0.1``: names the key, the closest valid names and
            lists the valid ones.
    """
    if not isinstance(node, DictConfig):
        return
    target_name = node.get("_target_") if "_target_" in node else None
    if isinstance(target_name, str):
        try:
            target = get_object(target_name)
        except Exception as err:  # noqa: BLE001 - hydra raises several types for a bad path
            raise UnknownNameError(
                f"{key}._target_={target_name!r} cannot be imported ({type(err).__name__}: {err}). "
                "Fix: check the spelling of the class path"
            ) from None
        names, var_kw = _parameters(target)
        if not var_kw:
            unknown = [k for k in node.keys() if str(k) not in _HYDRA_KEYS and str(k) not in names]
            if unknown:
                bad = str(unknown[0])
                valid = [n for n in names if n not in ("self",)]
                raise UnknownNameError(
                    f"{key}.{bad} is not an argument of {target_name}{did_you_mean(bad, valid, n=3)} "
                    f"Valid arguments: {valid}. Fix: correct or remove {key}.{bad}"
                )
    for child_key in node.keys():
        if OmegaConf.is_missing(node, child_key):
            continue
        try:
            child = node[child_key]
        except Exception:  # noqa: BLE001 - an interpolation that only resolves later is not ours to check
            continue
        if isinstance(child, DictConfig):
            check_target_arguments(child, f"{key}.{child_key}")


def check_trainer_numbers(trainer_cfg: DictConfig) -> None:
    """Epoch and step limits are whole numbers in range (``trainer.max_epochs=-2`` is refused here)."""
    hints = {
        "max_epochs": "-1 trains until max_steps or early stopping",
        "min_epochs": "",
        "max_steps": "-1 means no step limit",
        "min_steps": "",
    }
    for name, hint in hints.items():
        value = trainer_cfg.get(name)
        if value is None:
            continue
        low = -1 if name.startswith("max") else 0
        check_int(f"trainer.{name}", value, low=low, hint=hint)
    max_epochs, min_epochs = trainer_cfg.get("max_epochs"), trainer_cfg.get("min_epochs")
    if max_epochs not in (None, -1) and min_epochs is not None and min_epochs > max_epochs:
        raise ConfigurationError(
            f"trainer.min_epochs={min_epochs} is larger than trainer.max_epochs={max_epochs}. Fix: lower min_epochs"
        )


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """``trainer=gpu`` on a machine without a GPU is one line, not Lightning's traceback."""
    accelerator = str(trainer_cfg.get("accelerator") or "auto").lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        mps = getattr(torch.backends, "mps", None)
        alt = " (this machine has Apple MPS: trainer.accelerator=mps)" if mps is not None and mps.is_available() else ""
        raise ConfigurationError(
            f"trainer.accelerator={accelerator!r} but torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}){alt}. "
            "Fix: trainer=cpu (or trainer.accelerator=cpu), or install a CUDA build of torch"
        )
    if accelerator == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigurationError("trainer.accelerator='mps' but Apple MPS is not available here. Fix: trainer=cpu")


def check_train_or_checkpoint(train: bool, ckpt_path: str | None) -> None:
    """``train=false`` needs a trained checkpoint: otherwise the test measures an untrained head."""
    if not train and not ckpt_path:
        raise ConfigurationError(
            "train=false without ckpt_path would test a randomly initialised head and report it as a result. "
            "Fix: add ckpt_path=<run folder>/checkpoints/<epoch>.ckpt, or drop train=false"
        )


def check_monitored_splits(split_sizes: dict[str, int], callbacks: dict[str, Any]) -> None:
    """Callbacks that monitor ``val/*`` need validation data (``data.val_fraction=0`` and no val source)."""
    if split_sizes.get("val", 0) > 0:
        return
    for name, callback in callbacks.items():
        monitor = getattr(callback, "monitor", None)
        if isinstance(monitor, str) and monitor.startswith("val/"):
            raise ConfigurationError(
                f"there is no validation data (data.val_fraction=0 and no validation source), but callbacks.{name} "
                f"monitors {monitor!r}. Fix: set data.val_fraction (e.g. 0.1), or remove the callback "
                f"(~callbacks.{name}) / monitor a training metric (callbacks.{name}.monitor=train/loss)"
            )


def check_test_split(test: bool, split_sizes: dict[str, int], fraction: Any, source_key: str) -> None:
    """``test=true`` needs test data; found before training rather than after it.

    Args:
        test: The run's ``test`` switch.
        split_sizes: Samples per split (``datamodule.split_sizes()``).
        fraction: ``data.test_fraction``.
        source_key: The config key of a separate test source (``data.test_dir``).
    """
    if test and split_sizes.get("test", 0) == 0:
        raise DataError(
            f"test=true but there is no test data (data.test_fraction={fraction} and no {source_key}). "
            f"Fix: set data.test_fraction (e.g. 0.1) or {source_key}=..., or add test=false"
        )


def _batchnorms(module: torch.nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _fails_on_one_sample(model: torch.nn.Module, sample: Any) -> str | None:
    """Run one training-mode forward on a batch of one; the error text when BatchNorm refuses it.

    Running statistics, train/eval modes and the global RNG are left as they were.
    """
    modes = {m: m.training for m in model.modules()}
    buffers = {
        name: buf.clone() for name, buf in model.named_buffers() if any(k in name for k in ("running_", "num_batches"))
    }
    try:
        model.train()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model(sample)
    except ValueError as err:
        if "Expected more than 1 value per channel" in str(err):
            return str(err)
        raise
    finally:
        for m, training in modes.items():
            m.training = training
        current = dict(model.named_buffers())
        for name, saved in buffers.items():
            current[name].copy_(saved)
    return None


def _other_batch_sizes(n: int, batch_size: int) -> list[int]:
    sizes = [b for b in range(batch_size + 1, batch_size * 2 + 2) if n % b != 1][:1]
    sizes += [b for b in range(batch_size - 1, 1, -1) if n % b != 1][:1]
    return sorted(sizes)


def check_batchnorm_last_batch(
    model: torch.nn.Module,
    first_batch: Callable[[], Any],
    train_size: int,
    batch_size: int,
    world_size: int = 1,
    drop_last: bool | None = None,
) -> None:
    """Refuse a training split whose last batch holds one sample when BatchNorm cannot train on it.

    Only checked when it can happen (``len(train) % batch_size == 1`` per rank, no ``drop_last``,
    BatchNorm in the model); then one forward pass on a single real sample decides.

    Args:
        model: The model (its BatchNorm layers in training mode fail on ``1 x C x 1 x 1`` inputs).
        first_batch: Returns a training batch (``(inputs, targets)``); its first sample is used.
        train_size: Training samples.
        batch_size: ``data.batch_size``.
        world_size: Processes sharing the training split (DDP pads it to equal parts).
        drop_last: The data module's ``drop_last`` (``None`` when it has no such option).
    """
    per_rank = math.ceil(train_size / max(1, world_size))
    if drop_last or per_rank % batch_size != 1 or not _batchnorms(model):
        return
    batch = first_batch()
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    sample = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
    error = _fails_on_one_sample(model, sample)
    if error is None:
        return
    ranks = f" per process ({world_size} processes)" if world_size > 1 else ""
    if drop_last is None:
        sizes = _other_batch_sizes(per_rank, batch_size)
        fix = f"change data.batch_size (e.g. {' or '.join(map(str, sizes))})" if sizes else "change data.batch_size"
    else:
        fix = "add data.drop_last=true (or change data.batch_size)"
    raise ConfigurationError(
        f"the last training batch of every epoch holds 1 sample ({per_rank} training samples{ranks}, "
        f"data.batch_size={batch_size}) and the model's BatchNorm layers cannot train on one sample "
        f"({error.splitlines()[0]}). Fix: {fix}"
    )
