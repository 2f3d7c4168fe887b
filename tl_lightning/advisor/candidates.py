"""Candidate backbones for ``tl-rank``: what a candidate is, and its features through the cached-feature path.

A candidate is written in one of three ways (``candidates=[...]`` in ``tl-rank``):

* a registry name: ``timm:tf_efficientnet_lite0``, ``hf:/path/to/folder`` (pretrained weights from
  the family's hub or the folder);
* a backbone config name from ``conf/backbone/``: ``timm_efficientnet_lite0_asset``, ``hf_minilm``
  (its ``name``, ``pretrained``, ``weights`` and ``kwargs``, e.g. the key map of an offline asset);
* a mapping with ``name`` (a registry name) or ``config`` (a backbone config name) and any of
  ``label`` (its row in the table), ``pretrained`` (``false``: the same architecture with random
  weights, the negative control; labelled ``<name> (random init)``), ``weights``, ``kwargs``,
  ``source_classifier`` and ``source_key_map`` (below).

**Source classifiers (LEEP, NCE).** LEEP and NCE score the pretraining classifier's outputs on the
target data. A candidate gets them when it is a pretrained ``timm:`` model whose weights hold the
classifier (timm's ``pretrained_cfg["classifier"]``: ``classifier`` for EfficientNets, ``fc`` for
ResNets, ``head`` for ViTs): hub weights, a timm-layout file, or a third-party file whose key map
is built by a function with a ``keep_classifier`` argument
(:func:`~tl_lightning.backbones.key_maps.efficientnet_lite_to_timm`: the EfficientNet-Lite assets),
which is called again with ``keep_classifier=True``; or give the rules that keep it as
``source_key_map``. The classifier is the linear layer timm applies to the pooled features the
backbone returns, so the source outputs are ``softmax(W f + b)`` of the cached features: no second
forward pass. ``hf:`` and ``tv:`` candidates, random-init candidates and weights without a
classifier get none (``source_classifier: false`` turns it off); their LEEP / NCE cells stay empty
and they are ranked by LogME, H-score and the linear probe.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tl_lightning.errors import ConfigurationError, UnknownNameError, did_you_mean

__all__ = ["Candidate", "CandidateRun", "candidate_features", "parse_candidates", "source_classifier"]

_KEYS = ("name", "config", "label", "pretrained", "weights", "kwargs", "source_classifier", "source_key_map")


@dataclass(frozen=True)
class Candidate:
    """One backbone to rank.

    Attributes:
        label: Its row in the table (unique).
        name: Registry name (``timm:...``, ``hf:...``).
        pretrained: Pretrained weights (``False``: random init, a negative control).
        weights: Weights source (a local file, hub tag or folder), or ``None``.
        kwargs: Backbone keyword arguments, as configured (a ``key_map`` may still be a
            ``{"_target_": ...}`` mapping; :meth:`backbone_kwargs` instantiates them).
        source_classifier: ``False`` turns the LEEP / NCE classifier off; ``None``: when available.
        source_key_map: Rules that load the weights with their classifier (``None``: derived).
    """

    label: str
    name: str
    pretrained: bool = True
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    source_classifier: bool | None = None
    source_key_map: Any = None

    def backbone_kwargs(self) -> dict[str, Any]:
        """``kwargs`` with ``_target_`` mappings instantiated (``key_map`` rules)."""
        from hydra.utils import instantiate

        return {k: instantiate(v, _convert_="all") if _is_target(v) else v for k, v in self.kwargs.items()}

    def classifier_key_map(self) -> Any:
        """Rules that load the weights with the source classifier (see the module docstring), or ``None``."""
        from hydra.utils import get_method, instantiate

        if self.source_key_map is not None:
            return (
                instantiate(self.source_key_map, _convert_="all")
                if _is_target(self.source_key_map)
                else self.source_key_map
            )
        spec = self.kwargs.get("key_map")
        if spec is None:
            return None
        if _is_target(spec):
            fn = get_method(str(spec["_target_"]))
            if "keep_classifier" in inspect.signature(fn).parameters:
                return instantiate({**spec, "keep_classifier": True}, _convert_="all")
            return instantiate(spec, _convert_="all")
        return spec


def _is_target(value: Any) -> bool:
    return isinstance(value, Mapping) and "_target_" in value


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def parse_candidates(
    entries: Sequence[Any], backbone_config: Callable[[str], Mapping[str, Any]] | None = None
) -> list[Candidate]:
    """Candidates from ``candidates=[...]`` entries (see the module docstring).

    Args:
        entries: Registry names, backbone config names or mappings.
        backbone_config: Returns the resolved ``conf/backbone/<name>.yaml`` of a config name
            (``tl-rank`` composes it through Hydra); ``None``: config names are refused.

    Raises:
        ConfigurationError: An empty list, an entry of the wrong type, an unknown key, two
            candidates with the same label.
    """
    entries = _plain(entries)
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence) or not entries:
        raise ConfigurationError(
            f"candidates must be a non-empty list, got {entries!r}; e.g. "
            "candidates='[timm_efficientnet_lite0_asset,{config: timm_efficientnet_lite0_asset, pretrained: false}]'"
        )
    out: list[Candidate] = []
    for i, entry in enumerate(entries):
        where = f"candidates[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry} if ":" in entry else {"config": entry}
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"{where} must be a name or a mapping, got {entry!r}")
        unknown = [k for k in entry if k not in _KEYS]
        if unknown:
            raise ConfigurationError(
                f"{where} has unknown key {unknown[0]!r}{did_you_mean(str(unknown[0]), _KEYS)} Keys: {list(_KEYS)}"
            )
        if ("name" in entry) == ("config" in entry):
            raise ConfigurationError(
                f"{where} needs exactly one of `name` (a registry name, e.g. timm:resnet50) or `config` (a "
                f"backbone config, e.g. hf_minilm), got {dict(entry)!r}"
            )
        base: dict[str, Any] = {"pretrained": True, "weights": None, "kwargs": {}}
        if "config" in entry:
            if backbone_config is None:
                raise ConfigurationError(f"{where}: backbone config names need tl-rank's config loader")
            base.update(_plain(dict(backbone_config(str(entry["config"])))))
            label = str(entry["config"])
        else:
            name = str(entry["name"])
            if ":" not in name:
                raise ConfigurationError(
                    f"{where}: name={name!r} is not a registry name (timm:<arch>, hf:<id or folder>, tv:<arch>); "
                    "for a backbone config use config=<name>"
                )
            base["name"] = name
            label = name
        for key in ("pretrained", "weights", "source_classifier", "source_key_map"):
            if key in entry:
                base[key] = entry[key]
        if "kwargs" in entry:
            base["kwargs"] = {**dict(base.get("kwargs") or {}), **dict(entry["kwargs"] or {})}
        pretrained = base["pretrained"]
        if not isinstance(pretrained, bool):
            raise ConfigurationError(f"{where}.pretrained must be true or false, got {pretrained!r}")
        if "label" in entry:
            label = str(entry["label"])
        elif not pretrained:
            label = f"{label} (random init)"
        source = base.get("source_classifier")
        if source is not None and not isinstance(source, bool):
            raise ConfigurationError(f"{where}.source_classifier must be true, false or null, got {source!r}")
        out.append(
            Candidate(
                label=label,
                name=str(base["name"]),
                pretrained=pretrained,
                weights=None if not pretrained or base.get("weights") is None else str(base["weights"]),
                kwargs=dict(base.get("kwargs") or {}),
                source_classifier=source,
                source_key_map=base.get("source_key_map"),
            )
        )
    labels = [c.label for c in out]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigurationError(
            f"candidates {twice} appear twice; give each a distinct `label` (e.g. {{name: ..., label: mine}})"
        )
    return out


def source_classifier(candidate: Candidate, feature_dim: int) -> tuple[nn.Linear | None, str]:
    """The pretraining classifier of ``candidate`` as a linear layer on its pooled features, and a note.

    ``(None, why)`` when the candidate has none (see the module docstring).

    Raises:
        WeightsUnavailableError: The weights cannot be read.
    """
    if candidate.source_classifier is False:
        return None, "turned off (source_classifier: false)"
    if not candidate.pretrained:
        return None, "random init"
    family, _, arch = candidate.name.partition(":")
    if family != "timm":
        return None, f"{family}: backbones have no source classifier here"
    import timm
    from timm.models import get_pretrained_cfg

    from tl_lightning.backbones._weights import is_local_weights, read_state_dict, rename_keys

    base = arch.split(".", 1)[0]
    cfg = get_pretrained_cfg(base)
    classifier_name = getattr(cfg, "classifier", None) if cfg is not None else None
    if not isinstance(classifier_name, str):
        return None, f"timm model {base!r} declares no single classifier"
    if candidate.weights is not None and is_local_weights(candidate.weights):
        state = rename_keys(read_state_dict(candidate.weights), candidate.classifier_key_map())
    else:
        tag = f"{base}.{candidate.weights}" if candidate.weights else arch
        state = timm.create_model(tag, pretrained=True).state_dict()
    weight, bias = state.get(f"{classifier_name}.weight"), state.get(f"{classifier_name}.bias")
    if weight is None or weight.ndim != 2:
        return None, f"the weights hold no {classifier_name!r} classifier"
    if weight.shape[1] != feature_dim:
        return None, f"the classifier takes {weight.shape[1]} features, the backbone returns {feature_dim}"
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        if bias is not None:
            layer.bias.copy_(bias.float())
    return layer, f"{classifier_name} ({weight.shape[0]} source classes)"


@dataclass
class CandidateRun:
    """What :func:`candidate_features` computed for one candidate.

    Attributes:
        features: The :class:`~tl_lightning.transferability.CandidateFeatures` for the ranking.
        source: The source-classifier note (what it is, or why there is none).
        reused: The features were read from the cache.
        params: Backbone parameters.
        seconds: Wall time: building the model, features, source outputs.
    """

    features: Any
    source: str
    reused: bool
    params: int
    seconds: dict[str, float]


def candidate_features(
    candidate: Candidate,
    datamodule: Any,
    *,
    trainer: Any = None,
    cache_dir: Any = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> CandidateRun:
    """Build ``candidate``, compute (or read) its frozen features of the train and val splits, time them.

    The features go through :class:`~tl_lightning.features.FeatureExtractor` (eval mode, the
    trainer's device and precision, the cache). ``forward_seconds_per_batch`` for the fine-tuning
    estimate is the extraction's wall time per training batch (data loading included, as in a
    training step); for features read from the cache, one batch is timed.
    """
    from tl_lightning.advisor.measurements import prepare_for_extraction
    from tl_lightning.features import FeatureExtractor
    from tl_lightning.features.extraction import extract_features
    from tl_lightning.modules.classifier import TransferClassifier
    from tl_lightning.transferability import CandidateFeatures

    t0 = time.perf_counter()
    torch.manual_seed(seed)  # random-init controls: the same weights on every run
    model = TransferClassifier(
        candidate.name,
        labels=datamodule.labels,
        pretrained=candidate.pretrained,
        weights=candidate.weights,
        backbone_kwargs=candidate.backbone_kwargs(),
    )
    datamodule.set_preprocess(model.backbone.preprocess)
    model = prepare_for_extraction(model, trainer)
    built = time.perf_counter() - t0

    extractor = FeatureExtractor(model, cache_dir=cache_dir, batch_size=batch_size, trainer=trainer)
    train, val = extractor.train_and_val(datamodule)
    bs = int(batch_size or datamodule.batch_size)
    if train.reused:
        plugin = trainer.precision_plugin if trainer is not None else None
        loader = datamodule.feature_loader("train", list(range(min(bs, len(train)))), bs)
        t1 = time.perf_counter()
        extract_features(
            model,
            loader,
            device=trainer.strategy.root_device if trainer is not None else None,
            forward_context=plugin.forward_context if plugin is not None else None,
            convert_input=plugin.convert_input if plugin is not None else None,
        )
        per_batch = time.perf_counter() - t1
    else:
        per_batch = train.seconds / math.ceil(len(train) / bs)
    features_seconds = train.seconds + (val.seconds if val is not None else 0.0)

    t1 = time.perf_counter()
    layer, note = source_classifier(candidate, model.backbone.feature_dim)
    probs = None
    if layer is not None:
        with torch.no_grad():
            logits = layer(torch.from_numpy(np.asarray(train.features, dtype=np.float32)))
            probs = logits.double().softmax(dim=1).numpy()
    source_seconds = time.perf_counter() - t1
    targets = np.asarray(train.targets)
    if targets.ndim != 1:
        raise ConfigurationError("tl-rank ranks on single-label (multiclass) data; this data is multi-label")
    features = CandidateFeatures(
        train_features=train.features,
        train_labels=targets,
        source_probs=probs,
        val_features=None if val is None else val.features,
        val_labels=None if val is None else np.asarray(val.targets),
        feature_seconds=built + features_seconds + source_seconds,
        forward_seconds_per_batch=per_batch,
        batch_size=bs,
    )
    params = int(sum(p.numel() for p in model.backbone.parameters()))
    del model
    return CandidateRun(
        features=features,
        source=note,
        reused=bool(train.reused),
        params=params,
        seconds={"build": built, "features": features_seconds, "source_outputs": source_seconds},
    )


def unknown_backbone_config(name: str, known: Sequence[str]) -> UnknownNameError:
    """The error for a candidate naming a backbone config that does not exist."""
    return UnknownNameError(
        f"unknown backbone config {name!r}{did_you_mean(name, known)} Backbone configs: {sorted(known)}; or give a "
        "registry name such as timm:resnet50 or hf:<folder>"
    )
