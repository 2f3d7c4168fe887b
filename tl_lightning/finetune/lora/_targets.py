"""Which module LoRA is added to and which of its layers it adapts, found through the layer-group contract.

The adapter goes into the deepest module that holds every (non-head) layer group of the
LightningModule: ``backbone.model`` for a :class:`~tl_lightning.TransferClassifier`, ``model`` for
a user's ``self.model``. Its default targets are what the model family declares
(:attr:`~tl_lightning.backbones.LayerGroup.adapter_targets`: the attention projections of
transformer blocks); ``target_modules=`` picks others, with PEFT's meaning (names or name
suffixes, or one regex matched in full) but never the head, which trains fully.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from tl_lightning._targets import FineTuneTargets
from tl_lightning.errors import ConfigurationError

__all__ = ["injection_root", "resolve_target_modules", "TargetModules"]

TargetModules = str | Sequence[str] | None

_ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def injection_root(pl_module: nn.Module, targets: FineTuneTargets) -> str:
    """Attribute path of the deepest module of ``pl_module`` holding every scheduled layer group."""
    names = {id(p): n for n, p in pl_module.named_parameters()}
    paths = [names[id(p)].split(".")[:-1] for g in targets.groups for p in g.parameters() if id(p) in names]
    if not paths:
        raise ConfigurationError(f"the layer groups of {type(pl_module).__name__} hold none of its parameters")
    common = paths[0]
    for path in paths[1:]:
        k = 0
        while k < min(len(common), len(path)) and common[k] == path[k]:
            k += 1
        common = common[:k]
    return ".".join(common)


def _layer_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def _suffix(name: str) -> str:
    """What a user would pass for this layer: the part after the block index (``layer1.0.conv1`` -> ``conv1``)."""
    parts = name.split(".")
    digits = [i for i, p in enumerate(parts) if p.isdigit()]
    if not digits:
        return name
    last = digits[-1]
    return ".".join(parts[last + 1 :]) if last < len(parts) - 1 else ".".join(parts[max(0, last - 1) :])


def adaptable_layers(root: nn.Module, allowed: set[int]) -> list[str]:
    """Names (relative to ``root``) of the Linear / Conv / Embedding layers whose weights are all in ``allowed``."""
    return [
        n
        for n, m in root.named_modules()
        if n and isinstance(m, _ADAPTABLE) and _layer_ids(m) and _layer_ids(m) <= allowed
    ]


def _describe_layers(names: Sequence[str]) -> str:
    suffixes = list(dict.fromkeys(_suffix(n) for n in names))
    shown = ", ".join(names[:8]) + (f" ... ({len(names)} in all)" if len(names) > 8 else "")
    return f"suffixes {suffixes[:12]}{' ...' if len(suffixes) > 12 else ''}; layers: {shown}"


def _matches(name: str, spec: str | Sequence[str]) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def resolve_target_modules(
    pl_module: nn.Module, root: str, targets: FineTuneTargets, target_modules: TargetModules, what: str
) -> list[str]:
    """Names, relative to ``pl_module.<root>``, of the layers LoRA adapts.

    Args:
        pl_module: The LightningModule.
        root: Its injection root (:func:`injection_root`).
        targets: Its layer groups and head.
        target_modules: ``None`` (the family's declared targets), names / name suffixes, or one
            regex matched against whole names (PEFT's rules).
        what: How to call the model in errors (``"timm:test_resnet"``).

    Raises:
        ConfigurationError: no default targets (a CNN) and none given, or ``target_modules``
            matches no adaptable layer of the backbone; the message lists the layers there are.
    """
    module = pl_module.get_submodule(root) if root else pl_module
    body = {id(p) for g in targets.groups for p in g.parameters()}
    layers = adaptable_layers(module, body)
    if target_modules is None:
        ids = {id(m): n for n, m in module.named_modules()}
        declared = [ids[id(m)] for g in targets.groups for _, m in g.adapter_targets if id(m) in ids]
        if declared:
            return declared
        raise ConfigurationError(
            f"LoRA: {what} declares no default target modules (it has no transformer attention projections, e.g. a "
            "CNN). Fix: pass target_modules=[...] (tl-train: finetune.target_modules='[conv2]'): names or name "
            "suffixes of its layers, or one regex matched against whole names. Its Linear / Conv layers: "
            + _describe_layers(layers)
        )
    spec: str | list[str] = target_modules if isinstance(target_modules, str) else [str(t) for t in target_modules]
    if isinstance(spec, str):
        try:
            re.compile(spec)
        except re.error as err:
            raise ConfigurationError(f"LoRA target_modules={spec!r} is not a valid regex: {err}") from err
    head = {id(p) for _, p in targets.head}
    chosen = [
        n for n, m in module.named_modules()
        if n and _matches(n, spec) and _layer_ids(m) and not (_layer_ids(m) & head) and _layer_ids(m) <= body
    ]
    # a container that matches (``layer1``) is not a layer: keep the adaptable leaves PEFT supports
    chosen = [n for n in chosen if isinstance(module.get_submodule(n), _ADAPTABLE)] or chosen
    if not chosen:
        raise ConfigurationError(
            f"LoRA target_modules={target_modules!r} matches no Linear / Conv layer of {what}'s backbone (the head "
            "always trains fully and is never adapted). Fix: pick from its layers: " + _describe_layers(layers)
        )
    return chosen
