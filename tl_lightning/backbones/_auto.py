"""Layer groups for any module a user holds, not only tl_lightning adapters.

Callbacks that decide "which layers" (unfreezing, layer-wise LR, BN handling) must work on a
user's own LightningModule. :func:`layer_groups_for_module` asks the model families registered
in the backbone registry (timm, torchvision, transformers, and the user's own) for the module's
:class:`~tl_lightning.backbones.LayerSpec`, and falls back to grouping by children;
:func:`layer_groups_from_patterns` lets a user spell the grouping out with regexes. Both go
through the one grouping engine (:func:`~tl_lightning.backbones._grouping.build_layer_groups`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from tl_lightning.backbones._base import Backbone, LayerGroup, check_layer_groups
from tl_lightning.backbones._grouping import LayerSpec, build_layer_groups, spec_by_children, spec_from_patterns
from tl_lightning.backbones._registry import layer_spec_for
from tl_lightning.errors import ConfigurationError, LayerGroupError

__all__ = ["layer_groups_for_module", "layer_groups_from_patterns", "layer_spec_of"]


def layer_spec_of(module: nn.Module) -> LayerSpec:
    """The :class:`LayerSpec` of any module: a tl Backbone's own groups, a registered family's
    declaration, or the by-children fallback (recognized children grouped by their family)."""
    if isinstance(module, Backbone):
        return _spec_of_groups(module.layer_groups())
    spec = layer_spec_for(module)
    if spec is not None:
        return spec
    return _children_spec(module)


def _spec_of_groups(groups: Sequence[LayerGroup], prefix: str = "") -> LayerSpec:
    no_decay = [prefix + n for g in groups for n in g.no_weight_decay]
    heads = [prefix + n for g in groups if g.is_head for n, _ in g.params]
    return LayerSpec(
        [(g.name, [prefix + n for n, _ in g.params]) for g in groups],
        head=heads,
        no_weight_decay=no_decay,
        notes=tuple(getattr(groups, "notes", ())),
        adapter_targets=[prefix + n for g in groups for n, _ in g.adapter_targets],
    )


def _children_spec(module: nn.Module) -> LayerSpec:
    """The by-children fallback; children a family recognizes are grouped by that family."""
    base = spec_by_children(module)
    groups: list[tuple[str | None, Sequence[str]]] = []
    heads: list[str] = []
    no_decay: list[str] = []
    targets: list[str] = []
    notes = list(base.notes)
    for name, pnames in base.groups:
        child = module._modules.get(name) if name is not None else None
        inner = None
        if child is not None:
            inner = _spec_of_groups(child.layer_groups()) if isinstance(child, Backbone) else layer_spec_for(child)
        if inner is None:
            groups.append((name, pnames))
            continue
        # a recognized child keeps its family's groups, named as the family names them
        groups.extend((g, [f"{name}.{p}" for p in pns]) for g, pns in inner.groups)
        heads.extend(f"{name}.{h}" for h in inner.head)
        no_decay.extend(f"{name}.{d}" for d in inner.no_weight_decay)
        notes.extend(f"{name}: {n}" for n in inner.notes)
        targets.extend(f"{name}.{t}" for t in inner.adapter_targets)
    return LayerSpec(groups, head=heads, no_weight_decay=no_decay, notes=tuple(notes), adapter_targets=targets)


def layer_groups_for_module(module: nn.Module, prefix: str = "") -> list[LayerGroup]:
    """Group the parameters of any module into named layer groups, ordered input -> output.

    Recognized, in this order:

    * a tl_lightning :class:`~tl_lightning.backbones.Backbone`: its own ``layer_groups()``;
    * a model of a registered family (users' own families first): the family's
      :class:`~tl_lightning.backbones.LayerSpec`. Built in: timm models (timm's own
      ``group_matcher``: stem, each stage, final norm with the last stage), torchvision
      classification models (``stem``, ``layer1`` .. ``layer4`` for ResNets; ``stem``,
      ``features.N`` for EfficientNet / MobileNet; stem, 4 stages, norm for ConvNeXt; stem, each
      encoder layer, norm for ViT), Hugging Face ``PreTrainedModel`` s (``embeddings``, each
      layer of the encoder, what follows);
    * anything else: bare top-level parameters first (one group each), then one group per
      top-level child that holds parameters; a recognized model among the children is grouped
      by its family (so ``LightningModule(backbone=<timm model>, head=Linear)`` gives the timm
      stages then ``head``), and a container child holding more than half of the parameters
      is split into its children.

    The model's task head, as its family declares it (timm's ``pretrained_cfg["classifier"]``,
    torchvision's last classifier layer, whatever a transformers model holds outside its base
    model), is the last group, marked ``is_head``.

    Args:
        module: The module to group (a whole LightningModule or its trunk).
        prefix: Prepended to every parameter and module name, so groups built for
            ``pl_module.model`` carry names as seen from ``pl_module`` (``prefix="model"`` ->
            ``"model.layer1.0.conv1.weight"``). Group names do not carry it.

    Returns:
        Groups that are named, unique, disjoint and together cover every parameter of
        ``module`` (checked; :class:`~tl_lightning.errors.LayerGroupError` otherwise).

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18()
        >>> groups = layer_groups_for_module(net, prefix="model")
        >>> [g.name for g in groups], groups[-1].is_head
        (['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'fc'], True)
        >>> groups[0].params[0][0]
        'model.conv1.weight'
    """
    if not isinstance(module, nn.Module):
        raise ConfigurationError(f"layer_groups_for_module needs an nn.Module, got {type(module).__name__}")
    if not any(True for _ in module.parameters()):
        raise LayerGroupError(f"{type(module).__name__} has no parameters to group")
    if isinstance(module, Backbone):
        groups = module.layer_groups()
        check_layer_groups(module, groups)
        return build_layer_groups(module, _spec_of_groups(groups), prefix=prefix)
    return build_layer_groups(module, layer_spec_of(module), prefix=prefix)


def layer_groups_from_patterns(
    module: nn.Module,
    patterns: Sequence[tuple[str, str]] | Mapping[str, str],
    rest: str | None = None,
    prefix: str = "",
) -> list[LayerGroup]:
    """Group parameters by regexes on their names, for models the automatic grouping misses.

    Args:
        module: Module whose ``named_parameters()`` are grouped.
        patterns: ``(group name, regex)`` pairs or a ``{group name: regex}`` mapping, in
            input -> output order. A parameter goes to the first group whose regex matches
            somewhere in its name (``re.search``; anchor with ``^`` to match from the start).
            Names are relative to ``module``.
        rest: When given, parameters no regex matches form a last group of this name;
            otherwise they raise :class:`~tl_lightning.errors.LayerGroupError` listing them.
        prefix: Prepended to parameter / module names in the result (see
            :func:`layer_groups_for_module`).

    Returns:
        One group per pattern, in the given order (plus ``rest``).

    Raises:
        LayerGroupError: a regex matches no parameter (a typo would otherwise silently leave a
            group empty), parameters are left unmatched without ``rest``, or names repeat.
        ConfigurationError: a regex does not compile.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> groups = layer_groups_from_patterns(net, {"body": r"^0\\.", "head": r"^2\\."})
        >>> [(g.name, [n for n, _ in g.params]) for g in groups]
        [('body', ['0.weight', '0.bias']), ('head', ['2.weight', '2.bias'])]
    """
    return build_layer_groups(module, spec_from_patterns(module, patterns, rest=rest), prefix=prefix)
