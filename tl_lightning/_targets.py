"""Find the layer groups and the head of any LightningModule.

The fine-tuning callbacks never hard-code ``pl_module.backbone``. They resolve, in order:

1. an explicit ``groups=``: an attribute path to a submodule (``"model"``,
   ``"encoder.backbone"``), grouped by :func:`~tl_lightning.backbones._auto.layer_groups_for_module`,
   or ``{group name: regex}`` / ``[(group name, regex), ...]`` patterns on the module's
   parameter names;
2. the module's own ``layer_groups()`` method (``TransferClassifier`` has one);
3. a single :class:`~tl_lightning.backbones.Backbone` among the module's submodules.

The head is every parameter of the module that is in no layer group, plus the groups the
model family declares as its head (``LayerGroup.is_head``: timm's ``pretrained_cfg
["classifier"]``, torchvision's last classifier layer, a transformers task head), plus the
layer groups named in ``head=``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from tl_lightning.backbones._base import Backbone, LayerGroup
from tl_lightning.errors import ConfigurationError, LayerGroupError, UnknownNameError, did_you_mean

__all__ = ["GroupsSpec", "HeadSpec", "FineTuneTargets", "resolve_targets", "shared_groups"]

GroupsSpec = str | Mapping[str, str] | Sequence[Sequence[str]] | None
HeadSpec = str | Sequence[str] | None



@dataclass(frozen=True)
class FineTuneTargets:
    """What a fine-tuning callback acts on.

    Attributes:
        groups: Scheduled layer groups, input -> output (head excluded).
        head: ``(name, parameter)`` pairs of the head: always trainable, never scheduled.
    """

    groups: tuple[LayerGroup, ...]
    head: tuple[tuple[str, nn.Parameter], ...]
    notes: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """Layer group names, input -> output."""
        return [g.name for g in self.groups]

    def index(self, name: str) -> int:
        """Position of the group called ``name``."""
        return self.names.index(name)


def _get_attr_path(root: nn.Module, path: str) -> nn.Module:
    obj: object = root
    walked = []
    for part in path.split("."):
        if not hasattr(obj, part):
            children = [n for n, _ in obj.named_children()] if isinstance(obj, nn.Module) else []
            where = ".".join(walked) or type(root).__name__
            raise UnknownNameError(
                f"groups={path!r}: {where} has no attribute {part!r}{did_you_mean(part, children)} "
                f"(its submodules: {children}). Fix: pass the attribute path of the pretrained trunk, "
                "e.g. groups='model' for `self.model`."
            )
        obj = getattr(obj, part)
        walked.append(part)
    if not isinstance(obj, nn.Module):
        raise ConfigurationError(f"groups={path!r} names a {type(obj).__name__}, not an nn.Module")
    return obj


def _is_pattern_spec(spec: object) -> bool:
    if isinstance(spec, Mapping):
        return True
    return (
        isinstance(spec, Sequence)
        and not isinstance(spec, str)
        and all(isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 for p in spec)
    )


def _find_backbones(pl_module: nn.Module) -> list[tuple[str, Backbone]]:
    found: list[tuple[str, Backbone]] = []
    for name, mod in pl_module.named_modules():
        if isinstance(mod, Backbone) and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, mod))
    return found


def _raw_groups(pl_module: nn.Module, groups: GroupsSpec) -> list[LayerGroup]:
    from tl_lightning.backbones._auto import layer_groups_for_module, layer_groups_from_patterns

    if isinstance(groups, str):
        return layer_groups_for_module(_get_attr_path(pl_module, groups), prefix=groups)
    if groups is not None:
        if not _is_pattern_spec(groups):
            raise ConfigurationError(
                f"groups must be an attribute path (str), a {{name: regex}} mapping or a list of "
                f"[name, regex] pairs, got {groups!r}"
            )
        spec = dict(groups) if isinstance(groups, Mapping) else [(str(n), str(r)) for n, r in groups]
        # unmatched parameters become the head, so `rest` collects them and is dropped below
        out = layer_groups_from_patterns(pl_module, spec, rest="__rest__")
        return [g for g in out if g.name != "__rest__"]
    method = getattr(pl_module, "layer_groups", None)
    if callable(method):
        out = list(method())
        if not out or not all(isinstance(g, LayerGroup) for g in out):
            raise LayerGroupError(
                f"{type(pl_module).__name__}.layer_groups() must return a non-empty list of LayerGroup"
            )
        return out
    backbones = _find_backbones(pl_module)
    if len(backbones) == 1:
        return backbones[0][1].layer_groups()
    hint = (
        f"it holds several Backbones ({[n for n, _ in backbones]})"
        if backbones
        else "it has no layer_groups() method and no tl_lightning Backbone"
    )
    children = [n for n, _ in pl_module.named_children()]
    raise LayerGroupError(
        f"cannot find layer groups on {type(pl_module).__name__}: {hint}. Fix: pass groups='<attribute path>' "
        f"(one of {children}), or groups={{'<name>': '<regex>', ...}}, or define layer_groups()."
    )


def shared_groups(trainer: object, me: object, own: GroupsSpec) -> GroupsSpec:
    """``groups=`` given to one tl_lightning callback of a Trainer is seen by the others.

    Returns the one ``groups`` spec set on this or another fine-tuning callback of ``trainer``
    (``None`` when none is). Two different specs are an error: the callbacks would act on
    different layer groups (LR decay over one grouping, unfreezing over another).
    """
    specs = [] if own is None else [own]
    for cb in getattr(trainer, "callbacks", []):
        spec = getattr(cb, "groups", None)
        if cb is not me and spec is not None and getattr(cb, "shares_layer_groups", False) and spec not in specs:
            specs.append(spec)
    if len(specs) > 1:
        raise ConfigurationError(
            f"the fine-tuning callbacks of this Trainer were given different groups= ({specs}); give the same groups to "
            "each, or to one of them only (the others use it)"
        )
    return specs[0] if specs else None


def resolve_targets(pl_module: nn.Module, groups: GroupsSpec = None, head: HeadSpec = "auto") -> FineTuneTargets:
    """Resolve the scheduled layer groups and the head of ``pl_module``.

    Args:
        pl_module: Any ``nn.Module`` (normally the LightningModule).
        groups: See the module docstring.
        head: ``"auto"``: the head is what the grouping marks as head (the model family's
            declared classifier) plus every parameter in no group. A name or list of names:
            those layer groups are the head too. ``None``: only parameters in no group.

    Returns:
        The targets; the groups are named, unique and disjoint.
    """
    raw = _raw_groups(pl_module, groups)
    names = [g.name for g in raw]
    if len(set(names)) != len(names):
        raise LayerGroupError(f"duplicate layer group names: {names}")
    in_groups = {id(p) for g in raw for p in g.parameters()}
    rest = [(n, p) for n, p in pl_module.named_parameters() if id(p) not in in_groups]
    if head == "auto":
        head_names = [g.name for g in raw if g.is_head]
    elif head is None:
        head_names = []
    else:
        head_names = [head] if isinstance(head, str) else list(head)
        unknown = [h for h in head_names if h not in names]
        if unknown:
            raise UnknownNameError(
                f"head={unknown[0]!r} is not a layer group{did_you_mean(unknown[0], names)}; valid names: {names}"
            )
    scheduled = tuple(g for g in raw if g.name not in head_names)
    if not scheduled:
        raise LayerGroupError(f"no layer group is left to schedule after taking {head_names} as the head")
    head_params = tuple(rest) + tuple(np for g in raw if g.name in head_names for np in g.params)
    return FineTuneTargets(groups=scheduled, head=head_params, notes=tuple(getattr(raw, "notes", ())))
