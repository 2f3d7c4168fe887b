"""Optimizer parameter groups named after layer groups, with layer-wise LR decay.

One builder (:func:`layer_sections`) decides, for a list of layer groups and a head, each
group's name, its LR relative to the base LR and which of its parameters take no weight decay;
one check (:func:`check_lr_arguments`) validates the arguments. Both
:func:`layerwise_param_groups` (fresh param groups: TransferClassifier, users' own
``configure_optimizers``) and :func:`~tl_lightning.optim.apply_layerwise_lr_decay` (an
optimizer somebody else built) use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from tl_lightning._checks import check_number
from tl_lightning.backbones._base import LayerGroup
from tl_lightning.errors import ConfigurationError

__all__ = [
    "layerwise_param_groups",
    "layerwise_lrs",
    "layer_sections",
    "check_lr_arguments",
    "is_no_decay_param",
    "Section",
    "NO_DECAY_SUFFIX",
    "HEAD_GROUP",
]

NO_DECAY_SUFFIX = "/no_decay"
HEAD_GROUP = "head"

NoDecay = Callable[[str, nn.Parameter], bool]


def is_no_decay_param(name: str, param: nn.Parameter) -> bool:
    """The default for parameters no model family declared: 1-d tensors (biases, norm scales) take
    no weight decay. Layer groups carry their family's own declaration
    (:attr:`~tl_lightning.backbones.LayerGroup.no_weight_decay`: timm's ``no_weight_decay()``)."""
    return param.ndim <= 1


def layerwise_lrs(num_groups: int, base_lr: float, decay: float) -> list[float]:
    """Learning rates ``base_lr * decay ** (L - 1 - i)`` for ``i`` in ``0..L-1`` (input -> output).

    Example:
        >>> layerwise_lrs(3, 1e-3, 0.5)
        [0.00025, 0.0005, 0.001]
    """
    check_lr_arguments(decay=decay, base_lr=base_lr)
    return [base_lr * decay ** (num_groups - 1 - i) for i in range(num_groups)]


def check_lr_arguments(
    *,
    decay: float | None = None,
    base_lr: float | None = None,
    head_lr: float | None = None,
    head_lr_scale: float | None = None,
    weight_decay: float | None = None,
) -> None:
    """The one argument check of the layer-wise LR builders (``None`` = not given)."""
    if decay is not None:
        check_number("layer-wise LR decay", decay, low=0.0, high=1.0, low_open=True, hint="1.0 disables decay")
    if base_lr is not None:
        check_number("base_lr", base_lr, low=0.0, low_open=True)
    if head_lr is not None:
        check_number("head_lr", head_lr, low=0.0, low_open=True)
    if head_lr_scale is not None:
        check_number("head_lr_scale", head_lr_scale, low=0.0, low_open=True)
    if head_lr is not None and head_lr_scale not in (None, 1.0):
        raise ConfigurationError("give head_lr (absolute) or head_lr_scale (relative), not both")
    if weight_decay is not None:
        check_number("weight_decay", weight_decay, low=0.0)


@dataclass(frozen=True)
class Section:
    """One named slice of the parameters with its LR relative to the base LR.

    Attributes:
        name: Param-group name (a layer group's name, or ``"head"``).
        lr_scale: LR as a multiple of the base LR.
        params: ``(name, parameter)`` pairs.
        no_decay: Names of the parameters that take no weight decay.
        head_lr: An absolute head LR that replaces ``lr_scale * base`` (``None`` otherwise).
    """

    name: str
    lr_scale: float
    params: tuple[tuple[str, nn.Parameter], ...]
    no_decay: frozenset[str]
    head_lr: float | None = None

    def split(self, weight_decay_on: bool) -> list[tuple[str, list[nn.Parameter], bool]]:
        """``[(param-group name, params, takes weight decay)]``: ``<name>`` and ``<name>/no_decay``."""
        if not weight_decay_on:
            return [(self.name, [p for _, p in self.params], True)] if self.params else []
        decay = [p for n, p in self.params if n not in self.no_decay]
        skip = [p for n, p in self.params if n in self.no_decay]
        out = []
        if decay:
            out.append((self.name, decay, True))
        if skip:
            out.append((self.name + NO_DECAY_SUFFIX, skip, False))
        return out


def layer_sections(
    layer_groups: Sequence[LayerGroup],
    *,
    decay: float = 1.0,
    head: nn.Module | Iterable[tuple[str, nn.Parameter]] | None = None,
    head_lr: float | None = None,
    head_lr_scale: float = 1.0,
    backbone_lr_scale: float = 1.0,
    no_decay: NoDecay | None = None,
    head_name: str = HEAD_GROUP,
) -> list[Section]:
    """The named sections (layer groups, then the head) with their relative LRs: the one builder.

    Group ``i`` of ``L`` gets ``lr_scale = backbone_lr_scale * decay ** (L - 1 - i)``; the head
    ``head_lr_scale`` (or
    the absolute ``head_lr``). No weight decay: the group's declared set
    (:attr:`LayerGroup.no_weight_decay`) unless a ``no_decay(name, param)`` predicate is given;
    for the head, 1-d parameters. Groups marked ``is_head`` join the head.

    Raises:
        ConfigurationError: a parameter appears in two sections, or a bad argument.
    """
    check_lr_arguments(decay=decay, head_lr=head_lr, head_lr_scale=head_lr_scale)
    check_number("backbone_lr_scale", backbone_lr_scale, low=0.0, low_open=True)
    body = [g for g in layer_groups if not g.is_head]
    rel = [backbone_lr_scale * decay ** (len(body) - 1 - i) for i in range(len(body))]
    sections = []
    for g, r in zip(body, rel):
        named = tuple(g.named_parameters())
        exempt = (
            frozenset(n for n, p in named if no_decay(n, p)) if no_decay is not None else frozenset(g.no_weight_decay)
        )
        sections.append(Section(g.name, r, named, exempt))
    head_named = [np for g in layer_groups if g.is_head for np in g.params]
    if head is not None:
        head_named += list(head.named_parameters()) if isinstance(head, nn.Module) else list(head)
    if head_named:
        rule = no_decay or is_no_decay_param
        exempt = frozenset(n for n, p in head_named if rule(n, p))
        sections.append(Section(head_name, head_lr_scale, tuple(head_named), exempt, head_lr))
    seen: dict[int, str] = {}
    for s in sections:
        for n, p in s.params:
            if id(p) in seen:
                raise ConfigurationError(
                    f"parameter {n!r} appears in more than one group ({seen[id(p)]!r} and {s.name!r})"
                )
            seen[id(p)] = s.name
    return sections


def layerwise_param_groups(
    layer_groups: Sequence[LayerGroup],
    *,
    base_lr: float,
    decay: float = 1.0,
    head: nn.Module | Iterable[tuple[str, nn.Parameter]] | None = None,
    head_lr: float | None = None,
    weight_decay: float = 0.0,
    no_decay: NoDecay | None = None,
    head_name: str = HEAD_GROUP,
) -> list[dict]:
    """Build optimizer param groups: one named group per layer group (plus the head).

    Group ``i`` of ``L`` gets ``lr = base_lr * decay ** (L - 1 - i)``; the head gets ``head_lr``
    (default ``base_lr``). With ``weight_decay > 0`` each group is split in two: ``<name>`` with
    ``weight_decay`` and ``<name>/no_decay`` with 0 for the parameters that take no weight decay
    (1-d tensors and what the model family declares, e.g. timm's ``pos_embed`` / ``cls_token``;
    or ``no_decay(name, p)`` when given). Every group carries ``name`` (shown by
    LearningRateMonitor as ``lr-AdamW/<name>``), ``layer_group`` and ``lr_scale`` (its lr over
    ``base_lr``), and is present even when its parameters are frozen, so unfreezing never adds
    a param group and schedulers keep working.

    Args:
        layer_groups: Backbone layer groups, input -> output (groups marked ``is_head`` join
            the head).
        base_lr: LR of the top (last) layer group.
        decay: Per-group multiplicative decay in (0, 1]; 1.0 gives every group ``base_lr``.
        head: The task head (module or named parameters); ``None`` for none.
        head_lr: LR of the head; defaults to ``base_lr``.
        weight_decay: Decoupled weight decay for decaying parameters.
        no_decay: Predicate overriding which parameters take no weight decay.
        head_name: Name of the head's param group.

    Returns:
        A list of param-group dicts to pass to any ``torch.optim.Optimizer``.

    Example:
        >>> from tl_lightning import create_backbone
        >>> bb = create_backbone("timm:test_resnet", pretrained=False)
        >>> groups = layerwise_param_groups(bb.layer_groups(), base_lr=1e-3, decay=0.5, weight_decay=0.05)
        >>> [g["name"] for g in groups][:3]
        ['stem', 'stem/no_decay', 'layer1']
    """
    check_lr_arguments(base_lr=base_lr, head_lr=head_lr, weight_decay=weight_decay)
    sections = layer_sections(layer_groups, decay=decay, head=head, head_lr=head_lr, no_decay=no_decay, head_name=head_name)
    groups: list[dict] = []
    for s in sections:
        lr = s.head_lr if s.head_lr is not None else base_lr * s.lr_scale
        base = {"layer_group": s.name, "lr": lr, "lr_scale": lr / base_lr}
        for name, params, decays in s.split(weight_decay > 0):
            groups.append({**base, "name": name, "params": params, "weight_decay": weight_decay if decays else 0.0})
    return groups
