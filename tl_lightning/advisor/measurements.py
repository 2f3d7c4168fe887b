"""What ``finetune=auto`` measures before it picks a strategy, all on frozen features (cheap, cached).

:func:`measure` takes a model with pretrained weights and the run's data module and returns
:class:`Measurements`:

=========================  ==========================================================================
examples per class         training samples / classes (and the smallest class): the seed's data size
linear-probe accuracy      an L2 logistic regression on the frozen pretrained features, scored on the
                           validation split (:func:`~tl_lightning.transferability.linear_probe`);
                           with the majority-class rate ``chance`` it gives ``kappa = (acc - chance) /
                           (1 - chance)``: the share of the task the frozen features already solve
LogME                      evidence of the same features (:func:`~tl_lightning.transferability.logme`)
random-init reference      the same probe on the features of the same architecture with random weights
                           (``random_reference=True``): ``gain = (acc - acc_random) / (1 - acc_random)``,
                           how much of the headroom left by random features pretraining closes (0:
                           pretraining brings nothing measurable for this task)
domain shift               :mod:`tl_lightning.advisor.domain`: BatchNorm-statistics shift (image CNNs),
                           tokenizer fertility and unknown rate (text)
backbone size              parameters of the backbone, and per training example
=========================  ==========================================================================

The features go through :class:`~tl_lightning.features.FeatureExtractor` (eval mode, the run's
device and precision, the feature cache): a ``finetune=feature_extraction`` or ``lp_ft`` run that
follows on the same data reads the pretrained features back from the cache instead of
recomputing them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tl_lightning._checks import check_int
from tl_lightning.advisor.domain import batchnorm_shift, tokenizer_fertility
from tl_lightning.errors import ConfigurationError

__all__ = ["Measurements", "measure", "prepare_for_extraction"]


@dataclass(frozen=True)
class Measurements:
    """The numbers :func:`~tl_lightning.advisor.choose_strategy` decides from (see the module docstring).

    Attributes:
        n_train: Training samples.
        num_classes: Classes.
        min_class_count: Training samples of the smallest class.
        backbone_params: Parameters of the backbone (the head excluded).
        pretrained: The backbone was built with pretrained weights.
        probe_accuracy: Linear-probe accuracy of the frozen pretrained features.
        chance_accuracy: Majority-class rate of the probe's validation samples.
        random_probe_accuracy: The same probe on frozen random-init features (``None``: not measured).
        logme: LogME of the pretrained features.
        random_logme: LogME of the random-init features.
        shift: BatchNorm-statistics shift (``None``: no BatchNorm layers).
        tokens_per_word: Tokenizer fertility on the training texts (``None``: not text).
        unknown_rate: Unknown-token rate on the training texts.
        probe_val_samples: Samples the probe accuracy was measured on.
        seconds: Wall time of each measurement.
    """

    n_train: int
    num_classes: int
    min_class_count: int
    backbone_params: int
    pretrained: bool = True
    probe_accuracy: float | None = None
    chance_accuracy: float | None = None
    random_probe_accuracy: float | None = None
    logme: float | None = None
    random_logme: float | None = None
    shift: float | None = None
    tokens_per_word: float | None = None
    unknown_rate: float | None = None
    probe_val_samples: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def examples_per_class(self) -> float:
        """``n_train / num_classes``."""
        return self.n_train / max(self.num_classes, 1)

    @property
    def params_per_example(self) -> float:
        """Backbone parameters per training example."""
        return self.backbone_params / max(self.n_train, 1)

    @property
    def probe_kappa(self) -> float | None:
        """``(probe - chance) / (1 - chance)``: the share of the task the frozen features solve."""
        if self.probe_accuracy is None or self.chance_accuracy is None or self.chance_accuracy >= 1.0:
            return None
        return (self.probe_accuracy - self.chance_accuracy) / (1.0 - self.chance_accuracy)

    @property
    def relative_gain(self) -> float | None:
        """``(probe - probe_random) / (1 - probe_random)``: the headroom of random features pretraining closes."""
        if (
            self.probe_accuracy is None
            or self.random_probe_accuracy is None
            or self.random_probe_accuracy >= 1.0
        ):
            return None
        return (self.probe_accuracy - self.random_probe_accuracy) / (1.0 - self.random_probe_accuracy)

    def to_json(self) -> dict[str, Any]:
        """Every field plus the derived ratios, as a plain dict."""
        return {
            **asdict(self),
            "examples_per_class": self.examples_per_class,
            "params_per_example": self.params_per_example,
            "probe_kappa": self.probe_kappa,
            "relative_gain": self.relative_gain,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurements:
        """Inverse of :meth:`to_json` (derived fields are recomputed)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


def prepare_for_extraction(model: nn.Module, trainer: Any) -> nn.Module:
    """``model`` on the Trainer's device, in its precision (what Lightning's strategy does at fit time)."""
    if trainer is None:
        return model
    model = model.to(trainer.strategy.root_device)
    return trainer.precision_plugin.convert_module(model)


def _check_single_process(trainer: Any) -> None:
    if trainer is not None and int(trainer.world_size) > 1:
        raise ConfigurationError(
            f"measuring frozen features here runs in one process, but the trainer has {trainer.world_size} "
            "processes (devices x num_nodes). Fix: trainer.devices=1 (the measurement is a forward pass per sample)"
        )


def _class_counts(targets: np.ndarray) -> np.ndarray:
    if targets.ndim != 1:
        raise ConfigurationError(
            "finetune=auto measures single-label (multiclass) data; this data is multi-label. Pick a strategy "
            "yourself (finetune=full, llrd, lp_ft ...)"
        )
    return np.unique(targets, return_counts=True)[1]


def _features(
    model: nn.Module, datamodule: Any, trainer: Any, cache_dir: Any, batch_size: int | None
) -> tuple[Any, Any]:
    from tl_lightning.features import FeatureExtractor

    return FeatureExtractor(model, cache_dir=cache_dir, batch_size=batch_size, trainer=trainer).train_and_val(datamodule)


def _probe(train: Any, val: Any, seed: int) -> tuple[float, float, int]:
    """``(accuracy, chance, validation samples)`` of the linear probe."""
    from tl_lightning.features.linear import stratified_holdout
    from tl_lightning.transferability import linear_probe

    targets = np.asarray(train.targets)
    if val is not None:
        result = linear_probe(
            train.features, targets, val_features=val.features, val_labels=val.targets, seed=seed
        )
        val_targets = np.asarray(val.targets)
    else:
        result = linear_probe(train.features, targets, seed=seed)
        codes = np.unique(targets, return_inverse=True)[1]
        _, held = stratified_holdout(codes, 0.2, seed)
        val_targets = targets[held]
    chance = float(np.unique(val_targets, return_counts=True)[1].max() / len(val_targets))
    return float(result.accuracy), chance, int(result.n_val)


def measure(
    model: nn.Module,
    datamodule: Any,
    *,
    random_model: Callable[[], nn.Module] | None = None,
    trainer: Any = None,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    shift_samples: int = 256,
    seed: int = 0,
) -> Measurements:
    """Measure what ``finetune=auto`` decides from (see the module docstring).

    Args:
        model: A :class:`~tl_lightning.TransferClassifier` with the run's backbone and weights.
        datamodule: The run's data module, with ``model``'s preprocess set.
        random_model: Builds the same model with random weights (the reference for the probe
            gain); ``None`` skips the reference.
        trainer: A one-process Trainer whose device and precision the features are computed in
            (``None``: CPU, float32).
        cache_dir: Feature cache folder (see :class:`~tl_lightning.features.FeatureExtractor`).
        batch_size: Extraction batch size (default: the data module's).
        shift_samples: Training samples the domain-shift measures look at.
        seed: Seed of the probe's held-out split (without a validation split) and of the sample
            the shift is measured on.

    Raises:
        ConfigurationError: Multi-label data, or a multi-process trainer.
        DataError: An empty training split.
    """
    shift_samples = check_int("shift_samples", shift_samples, low=1)
    _check_single_process(trainer)
    seconds: dict[str, float] = {}
    backbone = getattr(model, "backbone", model)
    pretrained = bool(getattr(getattr(model, "hparams", {}), "get", lambda *_: True)("pretrained", True))
    model = prepare_for_extraction(model, trainer)

    t0 = time.perf_counter()
    train, val = _features(model, datamodule, trainer, cache_dir, batch_size)
    seconds["features"] = time.perf_counter() - t0
    counts = _class_counts(np.asarray(train.targets))
    t0 = time.perf_counter()
    probe, chance, n_val = _probe(train, val, seed)
    seconds["probe"] = time.perf_counter() - t0
    from tl_lightning.transferability import logme

    t0 = time.perf_counter()
    evidence = logme(train.features, np.asarray(train.targets))
    seconds["logme"] = time.perf_counter() - t0

    random_probe = random_evidence = None
    if random_model is not None:
        t0 = time.perf_counter()
        reference = prepare_for_extraction(random_model(), trainer)
        r_train, r_val = _features(reference, datamodule, trainer, cache_dir, batch_size)
        random_probe, _, _ = _probe(r_train, r_val, seed)
        random_evidence = logme(r_train.features, np.asarray(r_train.targets))
        seconds["random_reference"] = time.perf_counter() - t0
        del reference

    t0 = time.perf_counter()
    shift = tokens_per_word = unknown_rate = None
    preprocess = datamodule.effective_preprocess()
    dataset = datamodule.feature_dataset("train")
    if getattr(preprocess, "modality", None) == "text":
        texts = list(getattr(dataset, "texts", []))
        order = np.random.default_rng(seed).permutation(len(texts))[:shift_samples]
        fertility = tokenizer_fertility(
            preprocess.tokenizer, [texts[i] for i in order], max_samples=shift_samples
        )
        tokens_per_word, unknown_rate = fertility.tokens_per_word, fertility.unknown_rate
    else:
        order = np.random.default_rng(seed).permutation(len(dataset))[:shift_samples]
        loader = datamodule.feature_loader("train", sorted(int(i) for i in order), batch_size)
        plugin = trainer.precision_plugin if trainer is not None else None
        features = getattr(model, "features", backbone)

        def forward(x: Any) -> Any:
            with plugin.forward_context() if plugin is not None else torch.autocast("cpu", enabled=False):
                return features(plugin.convert_input(x) if plugin is not None else x)

        result = batchnorm_shift(
            backbone,
            loader,
            max_samples=shift_samples,
            device=trainer.strategy.root_device if trainer is not None else None,
            forward=forward,
        )
        shift = None if result is None or math.isnan(result.shift) else result.shift
    seconds["domain_shift"] = time.perf_counter() - t0

    return Measurements(
        n_train=len(train),
        num_classes=len(counts),
        min_class_count=int(counts.min()),
        backbone_params=int(sum(p.numel() for p in backbone.parameters())),
        pretrained=pretrained,
        probe_accuracy=probe,
        chance_accuracy=chance,
        random_probe_accuracy=random_probe,
        logme=float(evidence),
        random_logme=None if random_evidence is None else float(random_evidence),
        shift=shift,
        tokens_per_word=tokens_per_word,
        unknown_rate=unknown_rate,
        probe_val_samples=n_val,
        seconds=seconds,
    )
