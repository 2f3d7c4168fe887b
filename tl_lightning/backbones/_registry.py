"""Backbone registry: ``family:architecture`` names -> adapter factories, and model -> layer spec.

Families are prefixes (``timm``, ``tv``, ``hf``) whose factory takes the architecture part of the
name; their modules are imported lazily so ``import tl_lightning`` does not import transformers.
Users add their own with :func:`register_backbone` (one exact name) or :func:`register_family`
(a whole prefix).

A family also declares how its models split into layer groups (``layer_spec``): given any
module, it returns a :class:`~tl_lightning.backbones._grouping.LayerSpec` when the module is
one of its models. :func:`layer_spec_for` walks the families (users' own first), so grouping a
user's module (the callbacks do) uses the same declarations as the family's adapters.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from tl_lightning.backbones._base import Backbone
from tl_lightning.backbones._grouping import LayerSpec
from tl_lightning.errors import ConfigurationError, UnknownNameError, did_you_mean

__all__ = [
    "create_backbone",
    "register_backbone",
    "register_family",
    "list_backbones",
    "list_families",
    "layer_spec_for",
    "register_layer_spec",
]

BackboneFactory = Callable[..., Backbone]
#: ``module -> LayerSpec`` when the module is one of the family's models, else ``None``
LayerSpecFn = Callable[[nn.Module], LayerSpec | None]


@dataclass
class _Family:
    prefix: str
    factory: BackboneFactory | None
    list_names: Callable[[], list[str]] | None
    description: str
    layer_spec: LayerSpecFn | None = None


# Built-in families, imported on first use: (module, the library whose models it recognizes).
_BUILTIN_FAMILY_MODULES: dict[str, str] = {
    "timm": "tl_lightning.backbones.timm",
    "tv": "tl_lightning.backbones.torchvision",
    "hf": "tl_lightning.backbones.transformers",
}
_BUILTIN_LIBRARIES: dict[str, str] = {"timm": "timm", "tv": "torchvision", "hf": "transformers"}
_FAMILIES: dict[str, _Family] = {}
_NAMED: dict[str, BackboneFactory] = {}


def register_family(
    prefix: str,
    *,
    list_names: Callable[[], list[str]] | None = None,
    description: str = "",
    layer_spec: LayerSpecFn | None = None,
) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory for every name ``"<prefix>:<arch>"``, and how the family's models are grouped.

    The factory is called as ``factory(arch, pretrained=..., weights=..., **kwargs)`` and must
    return a :class:`~tl_lightning.backbones.Backbone`.

    Args:
        prefix: The family prefix (``"mine"`` for ``"mine:xray-net"``).
        list_names: Returns the architectures the family can build (for ``list_backbones``).
        description: One line shown in listings.
        layer_spec: ``module -> LayerSpec | None``: the family's layer groups, head and
            no-weight-decay names for any module that is one of its models (``None`` for other
            modules). Grouping a user's module (``layer_groups_for_module``, the fine-tuning
            callbacks) asks the families in turn, users' own first.

    Example:
        >>> from tl_lightning.backbones import LayerSpec
        >>> def xray_spec(module):
        ...     if type(module).__name__ != "XrayNet":
        ...         return None
        ...     return LayerSpec([("stem", ["conv.weight"]), ("body", ["blocks.0.weight"])], head=["fc"])
        >>> @register_family("xray", layer_spec=xray_spec)  # doctest: +SKIP
        ... def _build(arch, pretrained=True, weights=None, **kw): ...
    """
    if not isinstance(prefix, str) or ":" in prefix or not prefix:
        raise ConfigurationError(f"family prefix must be a non-empty string without ':', got {prefix!r}")

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        _FAMILIES[prefix] = _Family(prefix, factory, list_names, description, layer_spec)
        return factory

    return decorator


def register_layer_spec(prefix: str, layer_spec: LayerSpecFn) -> None:
    """Declare how a family of models is grouped, without a backbone factory.

    For plugging your own model classes into the fine-tuning callbacks: ``layer_spec(module)``
    returns a :class:`~tl_lightning.backbones.LayerSpec` for your models and ``None`` otherwise.
    """
    if not callable(layer_spec):
        raise ConfigurationError(f"layer_spec must be a callable module -> LayerSpec | None, got {layer_spec!r}")
    if not isinstance(prefix, str) or ":" in prefix or not prefix:
        raise ConfigurationError(f"family prefix must be a non-empty string without ':', got {prefix!r}")
    existing = _FAMILIES.get(prefix)
    if existing is not None:
        existing.layer_spec = layer_spec
    else:
        _FAMILIES[prefix] = _Family(prefix, None, None, "", layer_spec)


def layer_spec_for(module: nn.Module) -> LayerSpec | None:
    """The layer spec of ``module`` from the first family that recognizes it, else ``None``.

    Users' families are asked first, then the built-in ones whose library is already imported
    (a timm model can only exist once timm is imported, so nothing heavy is imported here).
    """
    for prefix, lib in _BUILTIN_LIBRARIES.items():
        if lib in sys.modules and prefix not in _FAMILIES:
            importlib.import_module(_BUILTIN_FAMILY_MODULES[prefix])
    builtin = [f for p, f in _FAMILIES.items() if p in _BUILTIN_FAMILY_MODULES]
    users = [f for p, f in _FAMILIES.items() if p not in _BUILTIN_FAMILY_MODULES]
    for family in users + builtin:
        if family.layer_spec is not None:
            spec = family.layer_spec(module)
            if spec is not None:
                return spec
    return None


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory under one exact name (``"mine:resnet-xray"``).

    The factory is called as ``factory(pretrained=..., weights=..., **kwargs)``. Exact names take
    precedence over family prefixes.
    """
    if ":" not in name:
        raise ConfigurationError(f"backbone names look like 'family:arch', got {name!r}")

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        _NAMED[name] = factory
        return factory

    return decorator


def _family(prefix: str) -> _Family:
    if prefix not in _FAMILIES and prefix in _BUILTIN_FAMILY_MODULES:
        importlib.import_module(_BUILTIN_FAMILY_MODULES[prefix])
    if prefix not in _FAMILIES:
        known = sorted(set(_FAMILIES) | set(_BUILTIN_FAMILY_MODULES))
        raise UnknownNameError(
            f"unknown backbone family {prefix!r}{did_you_mean(prefix, known)} "
            f"Known families: {known} (names look like 'timm:resnet50', 'tv:resnet50', "
            "'hf:bert-base-uncased' or 'hf:/path/to/local/folder')."
        )
    return _FAMILIES[prefix]


def list_families() -> list[str]:
    """Registered family prefixes (built-in ones included)."""
    return sorted(set(_FAMILIES) | set(_BUILTIN_FAMILY_MODULES))


def list_backbones(family: str | None = None, pattern: str | None = None) -> list[str]:
    """List known backbone names, optionally of one family and matching an ``fnmatch`` pattern.

    Families that cannot enumerate their models (``hf``: any hub id or local folder) contribute
    only explicitly registered names.
    """
    import fnmatch

    names = list(_NAMED)
    for prefix in [family] if family else list_families():
        fam = _family(prefix)
        if fam.list_names is not None:
            names.extend(f"{prefix}:{a}" for a in fam.list_names())
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.split(":", 1)[1], pattern)]
    return sorted(set(names))


def create_backbone(name: str, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> Backbone:
    """Build a backbone adapter by registry name.

    Args:
        name: ``"timm:<arch>"`` (any timm model, optionally ``arch.tag``), ``"tv:<arch>"`` (a
            torchvision classification model), ``"hf:<hub id or local folder>"`` (a
            transformers encoder), or a name added with :func:`register_backbone`.
        pretrained: Load pretrained weights. When they cannot be had (no network, unknown
            tag, missing file) a :class:`~tl_lightning.errors.WeightsUnavailableError` is
            raised; the model is never silently left at random init.
        weights: Where the weights come from, family-specific: a timm pretrained tag, a
            torchvision weights enum name (``"IMAGENET1K_V2"``), or a path to a local
            checkpoint file / folder. ``None`` uses the family default.
        **kwargs: Passed to the family factory (e.g. ``key_map`` regex rules to rename keys
            of third-party checkpoints, ``pooling`` for transformers, ``granularity``).

    Returns:
        The adapter, with its layer groups already checked.

    Example:
        >>> bb = create_backbone("timm:test_resnet", pretrained=False)
        >>> bb.feature_dim, bb.layer_group_names()[:2]
        (96, ['stem', 'layer1'])
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"backbone name must be a non-empty string, got {name!r}")
    if name in _NAMED:
        backbone = _NAMED[name](pretrained=pretrained, weights=weights, **kwargs)
    else:
        if ":" not in name:
            raise UnknownNameError(
                f"backbone name {name!r} has no family prefix; use one of "
                f"{[f'{p}:{name}' for p in list_families()]} (e.g. 'timm:{name}')."
            )
        prefix, arch = name.split(":", 1)
        if not arch:
            raise UnknownNameError(f"backbone name {name!r} has an empty architecture after {prefix!r}:")
        factory = _family(prefix).factory
        if factory is None:
            raise UnknownNameError(f"backbone family {prefix!r} declares layer groups only; it cannot build {name!r}")
        backbone = factory(arch, pretrained=pretrained, weights=weights, **kwargs)
    backbone.name = name
    return backbone
