"""Layer groups for any module a user holds, not only tl_lightning adapters.

Callbacks that decide "which layers" (unfreezing, layer-wise LR, BN handling) must work on a
user's own LightningModule. :func:`layer_groups_for_module` recognizes the model families
tl_lightning knows and groups them the way their adapters do; :func:`layer_groups_from_patterns`
lets a user spell out the grouping with regexes when the automatic one does not fit.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence

from torch import nn

from tl_lightning.backbones._base import Backbone, LayerGroup, module_groups_from_param_groups
from tl_lightning.errors import ConfigurationError, LayerGroupError

__all__ = ["layer_groups_for_module", "layer_groups_from_patterns", "param_groups_by_children"]

# A container child holding more than this share of the parameters is split into its children,
# so ``nn.Sequential(big_trunk_blocks...)`` does not become one all-or-nothing group.
_SPLIT_SHARE = 0.5

NamedParamGroups = list[tuple[str, list[str]]]


def layer_groups_for_module(module: nn.Module, prefix: str = "") -> list[LayerGroup]:
    """Group the parameters of any module into named layer groups, ordered input -> output.

    Recognized, in this order:

    * a tl_lightning :class:`~tl_lightning.backbones.Backbone`: its own ``layer_groups()``;
    * a timm model (has timm's ``group_matcher``): timm's coarse grouping (stem, each stage,
      final norm joined to the last stage), as the ``timm:`` adapter does;
    * a torchvision classification model: stages (``stem``, ``layer1`` .. ``layer4`` for
      ResNets; ``stem``, ``features.N`` for EfficientNet / MobileNet; stem, 4 stages for
      ConvNeXt; stem, each encoder layer, final norm for ViT), the classifier last;
    * a Hugging Face ``transformers`` ``PreTrainedModel``: ``embeddings``, each layer of the
      largest ``nn.ModuleList`` (``encoder.layer.N``), then what follows (final norm, pooler,
      task head), one group per top-level child;
    * anything else: bare top-level parameters first (one group each), then one group per
      top-level child that holds parameters. A recognized model among the children is
      grouped as above (so ``LightningModule(backbone=<timm model>, head=Linear)`` gives the
      timm stages then ``head``), and a container child (``nn.Sequential`` / ``nn.ModuleList``
      / ``nn.ModuleDict``) holding more than half of the parameters is split into its children.

    Args:
        module: The module to group (a whole LightningModule or its trunk).
        prefix: Prepended to every parameter and module name, so groups built for
            ``pl_module.model`` can carry names as seen from ``pl_module``
            (``prefix="model"`` -> ``"model.layer1.0.conv1.weight"``). A trailing ``.`` is
            added when missing.

    Returns:
        Groups that are named, unique, disjoint and together cover every parameter of
        ``module`` (checked; :class:`~tl_lightning.errors.LayerGroupError` otherwise). Group
        names do not carry ``prefix``.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18()
        >>> [g.name for g in layer_groups_for_module(net, prefix="model")]
        ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'fc']
        >>> layer_groups_for_module(net, prefix="model")[0].params[0][0]
        'model.conv1.weight'
    """
    if not isinstance(module, nn.Module):
        raise ConfigurationError(f"layer_groups_for_module needs an nn.Module, got {type(module).__name__}")
    groups = _groups_relative(module)
    _check(module, groups)
    return _with_prefix(groups, prefix)


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
    items = list(patterns.items()) if isinstance(patterns, Mapping) else [tuple(p) for p in patterns]
    if not items:
        raise ConfigurationError("layer_groups_from_patterns needs at least one (group name, regex) pair")
    names = [g for g, _ in items] + ([rest] if rest is not None else [])
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LayerGroupError(f"duplicate layer group names {dupes} in patterns; names must be unique")
    compiled = []
    for gname, pattern in items:
        try:
            compiled.append((gname, re.compile(pattern)))
        except re.error as err:
            raise ConfigurationError(f"layer group {gname!r}: invalid regex {pattern!r}: {err}") from err
    buckets: dict[str, list[str]] = {g: [] for g, _ in items}
    unmatched: list[str] = []
    for pname, _ in module.named_parameters():
        for gname, rx in compiled:
            if rx.search(pname):
                buckets[gname].append(pname)
                break
        else:
            unmatched.append(pname)
    empty = [f"{g}: {p!r}" for g, p in items if not buckets[g]]
    if empty:
        raise LayerGroupError(
            f"layer group pattern(s) match no parameter of {type(module).__name__}: {empty}. "
            f"Parameter names look like {[n for n, _ in module.named_parameters()][:5]}"
        )
    named: NamedParamGroups = [(g, buckets[g]) for g, _ in items]
    if unmatched:
        if rest is None:
            raise LayerGroupError(
                f"{len(unmatched)} parameter(s) match no layer group pattern: {unmatched[:10]}"
                f"{' ...' if len(unmatched) > 10 else ''}. Fix: extend the patterns, or pass rest='<group name>' "
                "to collect them in a last group."
            )
        named.append((rest, unmatched))
    groups = module_groups_from_param_groups(module, named)
    _check(module, groups)
    return _with_prefix(groups, prefix)


def param_groups_by_children(module: nn.Module) -> NamedParamGroups:
    """The fallback grouping of :func:`layer_groups_for_module` as ``(name, [param names])``.

    Bare parameters of ``module`` first (one group each), then one group per top-level child
    with parameters; a container child holding more than half of all parameters is split
    into its own children.
    """
    total = sum(p.numel() for p in module.parameters()) or 1
    named: NamedParamGroups = [(n, [n]) for n, _ in module.named_parameters(recurse=False)]
    for cname, child in module.named_children():
        pnames = [f"{cname}.{n}" for n, _ in child.named_parameters()]
        if not pnames:
            continue
        share = sum(p.numel() for p in child.parameters()) / total
        grand = [(g, m) for g, m in child.named_children() if any(True for _ in m.parameters())]
        bare = [f"{cname}.{n}" for n, _ in child.named_parameters(recurse=False)]
        if isinstance(child, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and share > _SPLIT_SHARE and len(grand) > 1:
            named.extend((n, [n]) for n in bare)
            for gname, g in grand:
                named.append((f"{cname}.{gname}", [f"{cname}.{gname}.{n}" for n, _ in g.named_parameters()]))
        else:
            named.append((cname, pnames))
    return named


def _groups_relative(module: nn.Module) -> list[LayerGroup]:
    """Groups with names relative to ``module`` (no prefix), not yet checked."""
    recognized = _recognized_groups(module)
    return recognized if recognized is not None else _children_groups(module)


def _recognized_groups(module: nn.Module) -> list[LayerGroup] | None:
    """The groups of a tl Backbone or a known model family; ``None`` for any other module."""
    if isinstance(module, Backbone):
        return list(module.layer_groups())
    family = _family_param_groups(module)
    return module_groups_from_param_groups(module, family) if family is not None else None


def _family_param_groups(module: nn.Module) -> NamedParamGroups | None:
    """Grouping from a known model family, or ``None`` when ``module`` is not one."""
    mod_path = type(module).__module__
    if mod_path.startswith("timm.") and callable(getattr(module, "group_matcher", None)):
        from tl_lightning.backbones.timm import timm_param_groups

        return timm_param_groups(module)
    if mod_path.startswith("torchvision.models"):
        from tl_lightning.backbones.torchvision import torchvision_param_groups

        return torchvision_param_groups(module)
    if "transformers" in sys.modules and _is_hf_model(module):
        from tl_lightning.backbones.transformers import hf_param_groups

        return hf_param_groups(module)
    return None


def _is_hf_model(module: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(module, PreTrainedModel)


def _children_groups(module: nn.Module) -> list[LayerGroup]:
    """Fallback grouping; recognized children are grouped by their own family."""
    params = dict(module.named_parameters())
    groups: list[LayerGroup] = []
    pending: NamedParamGroups = []
    for gname, pnames in param_groups_by_children(module):
        child = module._modules.get(gname)
        child_groups = _recognized_groups(child) if child is not None else None
        if child_groups is not None:
            if pending:
                groups.extend(module_groups_from_param_groups(module, pending))
                pending = []
            for g in child_groups:
                groups.append(
                    LayerGroup(
                        g.name,
                        tuple((f"{gname}.{n}", params[f"{gname}.{n}"]) for n, _ in g.params),
                        tuple((f"{gname}.{m}", mod) for m, mod in g.modules),
                    )
                )
        else:
            pending.append((gname, pnames))
    if pending:
        groups.extend(module_groups_from_param_groups(module, pending))
    return _unique_names(groups)


def _unique_names(groups: list[LayerGroup]) -> list[LayerGroup]:
    taken: set[str] = set()
    out = []
    for g in groups:
        name, k = g.name, 1
        while name in taken:
            k += 1
            name = f"{g.name}_{k}"
        taken.add(name)
        out.append(g if name == g.name else LayerGroup(name, g.params, g.modules))
    return out


def _with_prefix(groups: Sequence[LayerGroup], prefix: str) -> list[LayerGroup]:
    if not prefix:
        return list(groups)
    if not prefix.endswith("."):
        prefix += "."
    return [
        LayerGroup(
            g.name,
            tuple((prefix + n, p) for n, p in g.params),
            tuple((prefix + m, mod) for m, mod in g.modules),
        )
        for g in groups
    ]


def _check(module: nn.Module, groups: Sequence[LayerGroup]) -> None:
    from tl_lightning.backbones._base import check_layer_groups

    if not any(True for _ in module.parameters()):
        raise LayerGroupError(f"{type(module).__name__} has no parameters to group")
    check_layer_groups(module, groups)
