"""Backbone registry: ``family:architecture`` names -> adapter factories.

Families are prefixes (``timm``, ``tv``, ``hf``) whose factory takes the architecture part of the
name; their modules are imported lazily so ``import tl_lightning`` does not import transformers.
Users add their own with :func:`register_backbone` (one exact name) or :func:`register_family`
(a whole prefix).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tl_lightning.backbones._base import Backbone
from tl_lightning.errors import ConfigurationError, UnknownNameError, did_you_mean

__all__ = ["create_backbone", "register_backbone", "register_family", "list_backbones", "list_families"]

BackboneFactory = Callable[..., Backbone]


@dataclass
class _Family:
    prefix: str
    factory: BackboneFactory
    list_names: Callable[[], list[str]] | None
    description: str


# Built-in families, imported on first use.
_BUILTIN_FAMILY_MODULES: dict[str, str] = {
    "timm": "tl_lightning.backbones.timm",
    "tv": "tl_lightning.backbones.torchvision",
    "hf": "tl_lightning.backbones.transformers",
}
_FAMILIES: dict[str, _Family] = {}
_NAMED: dict[str, BackboneFactory] = {}


def register_family(
    prefix: str, *, list_names: Callable[[], list[str]] | None = None, description: str = ""
) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory for every name ``"<prefix>:<arch>"``.

    The factory is called as ``factory(arch, pretrained=..., weights=..., **kwargs)`` and must
    return a :class:`~tl_lightning.backbones.Backbone`.

    Example:
        >>> @register_family("mine", description="my in-house nets")  # doctest: +SKIP
        ... def _build(arch, pretrained=True, weights=None, **kw): ...
    """
    if ":" in prefix or not prefix:
        raise ConfigurationError(f"family prefix must be non-empty and contain no ':', got {prefix!r}")

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        _FAMILIES[prefix] = _Family(prefix, factory, list_names, description)
        return factory

    return decorator


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
        backbone = _family(prefix).factory(arch, pretrained=pretrained, weights=weights, **kwargs)
    backbone.name = name
    return backbone
