"""Re-partition an existing optimizer into named layer-wise groups, keeping its schedulers consistent.

:func:`apply_layerwise_lr_decay` takes an optimizer somebody else built (one or a few param
groups) and, in place, replaces its param groups by one group per layer group (plus the head),
each a copy of the original group's hyperparameters with its LR-like values scaled by the
group's multiplier. Schedulers already attached to the optimizer keep per-group lists
(``base_lrs``, ``lr_lambdas``, ``min_lrs`` ...); they are expanded the same way, including the
children of ``SequentialLR`` / ``ChainedScheduler``. Do it before training starts and before a
checkpoint's optimizer state is loaded (which needs the same group layout).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from tl_lightning.backbones._base import LayerGroup
from tl_lightning.errors import ConfigurationError
from tl_lightning.optim._param_groups import HEAD_GROUP, NoDecay, Section, check_lr_arguments, layer_sections

__all__ = ["apply_layerwise_lr_decay", "expand_scheduler", "LR_KEYS"]

#: param-group keys holding learning rates (scaled per group); others are copied as they are
LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr", "base_lr")
# per-param-group lists on torch schedulers: scaled (learning rates) or repeated (the rest)
_SCALED_LISTS = ("base_lrs", "_last_lr", "min_lrs", "max_lrs")
_REPEATED_LISTS = ("lr_lambdas", "base_momentums", "max_momentums")
# list attributes that are not per param group
_NOT_PER_GROUP = ("_milestones", "milestones", "_schedulers", "_schedule_phases")

Mapping_ = list[tuple[int, float]]  # new group index -> (old group index, lr multiplier)


def _scale(value: Any, m: float) -> Any:
    if isinstance(value, torch.Tensor):
        return value * m
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return value * m
    return value


def expand_scheduler(scheduler: Any, mapping: Mapping_, n_old: int) -> None:
    """Expand a scheduler's per-param-group state after the optimizer was re-partitioned.

    Args:
        scheduler: A torch LR scheduler (``LRScheduler``, ``ReduceLROnPlateau``, ``SequentialLR``,
            ``ChainedScheduler`` ...) attached to the re-partitioned optimizer.
        mapping: For each new param group, ``(index of the old group it came from, lr multiplier)``.
        n_old: Number of param groups before.
    """
    for child in getattr(scheduler, "_schedulers", None) or []:
        expand_scheduler(child, mapping, n_old)
    for attr, value in list(vars(scheduler).items()):
        if not isinstance(value, list) or attr in _NOT_PER_GROUP:
            continue
        if attr in _SCALED_LISTS or attr in _REPEATED_LISTS:
            if len(value) != n_old:
                raise ConfigurationError(
                    f"{type(scheduler).__name__}.{attr} has {len(value)} entries for {n_old} param groups; "
                    "cannot re-partition this optimizer"
                )
            scaled = attr in _SCALED_LISTS
            setattr(scheduler, attr, [_scale(value[j], m) if scaled else value[j] for j, m in mapping])
        elif len(value) == n_old:
            raise ConfigurationError(
                f"cannot re-partition the optimizer under {type(scheduler).__name__}: its attribute "
                f"{attr!r} looks like a per-param-group list that tl_lightning does not know how to expand. "
                "Fix: build the param groups yourself with tl_lightning.optim.layerwise_param_groups "
                "before creating the scheduler, or use a torch.optim.lr_scheduler scheduler."
            )


def apply_layerwise_lr_decay(
    optimizer: Optimizer,
    layer_groups: Sequence[LayerGroup],
    *,
    decay: float,
    head: Iterable[tuple[str, nn.Parameter]] = (),
    base_lr: float | None = None,
    head_lr: float | None = None,
    head_lr_scale: float = 1.0,
    backbone_lr_scale: float = 1.0,
    schedulers: Sequence[Any] = (),
    no_decay: NoDecay | None = None,
    include_frozen: bool = True,
) -> list[dict]:
    """Re-partition ``optimizer`` in place into named layer-wise groups with decayed LRs.

    Group ``i`` of ``L`` gets ``lr * decay ** (L - 1 - i)`` where ``lr`` is ``base_lr`` or, by
    default, the optimizer's own LR; the head gets ``head_lr`` (absolute) or ``head_lr_scale``
    times the base. Every LR-like value of the group (``lr``, ``initial_lr``, ``max_lr``,
    ``min_lr``) is scaled alike, and so are the attached ``schedulers``' per-group lists, so
    OneCycleLR, LambdaLR, ReduceLROnPlateau, SequentialLR etc. keep working. Parameters that take
    no weight decay (1-d tensors and what the model family declares, or ``no_decay(name, p)``)
    go to ``<name>/no_decay`` groups with ``weight_decay=0`` when their original group had
    weight decay.

    An optimizer that already has one param group per layer group (built by
    :func:`layerwise_param_groups` with ``decay=1``, e.g. ``TransferClassifier(layer_decay=1.0)``)
    is rescaled in place instead; one whose groups already carry a decay is refused (the
    decay would apply twice).

    Args:
        optimizer: Any torch optimizer, already built (possibly with a scheduler attached).
        layer_groups: Layer groups, input -> output (groups marked ``is_head`` join the head).
        decay: Multiplicative decay per group, in (0, 1].
        head: ``(name, parameter)`` pairs of the head.
        base_lr: LR of the top layer group; ``None`` keeps the optimizer's LR.
        head_lr: Absolute LR of the head (exclusive with ``head_lr_scale``).
        head_lr_scale: Head LR as a multiple of the base LR.
        backbone_lr_scale: Every layer group's LR times this (``0.1``: "the backbone at lr/10",
            the head at the optimizer's LR).
        schedulers: Schedulers attached to ``optimizer``.
        no_decay: Predicate overriding which parameters take no weight decay.
        include_frozen: Add frozen (``requires_grad=False``) layer-group parameters that the
            optimizer left out (``AdamW(filter(lambda p: p.requires_grad, ...))``), so that
            unfreezing later never needs a new param group. Needs a single original group.

    Returns:
        The new ``optimizer.param_groups``.

    Example:
        >>> import torch
        >>> from tl_lightning.backbones import layer_groups_from_patterns
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> groups = layer_groups_from_patterns(net, [("a", r"^0\\."), ("b", r"^1\\."), ("c", r"^2\\.")])[:2]
        >>> opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
        >>> pgs = apply_layerwise_lr_decay(opt, groups, decay=0.5, head=net[2].named_parameters())
        >>> [(g["name"], g["lr"]) for g in pgs]  # doctest: +NORMALIZE_WHITESPACE
        [('a', 0.0005), ('a/no_decay', 0.0005), ('b', 0.001), ('b/no_decay', 0.001),
         ('head', 0.001), ('head/no_decay', 0.001)]
    """
    check_lr_arguments(decay=decay, base_lr=base_lr, head_lr=head_lr, head_lr_scale=head_lr_scale)
    sections = layer_sections(
        layer_groups,
        decay=decay,
        head=head,
        head_lr=head_lr,
        head_lr_scale=head_lr_scale,
        backbone_lr_scale=backbone_lr_scale,
        no_decay=no_decay,
    )
    old = list(optimizer.param_groups)
    n_old = len(old)
    if old and all("layer_group" in pg for pg in old):
        return _rescale_named(optimizer, sections, base_lr, schedulers)
    owner_old = {id(p): j for j, pg in enumerate(old) for p in pg["params"]}
    in_sections = {id(p) for s in sections for _, p in s.params}
    missing = [(n, p) for s in sections for n, p in s.params if id(p) not in owner_old]
    if missing and include_frozen:
        _place_frozen(sections, owner_old, n_old)
    new: list[dict] = []
    mapping: Mapping_ = []
    for section in sections:
        for j, pg in enumerate(old):
            mine = tuple((n, p) for n, p in section.params if owner_old.get(id(p)) == j)
            if not mine:
                continue
            lr0 = float(pg.get("initial_lr", pg["lr"]))
            if lr0 <= 0:
                raise ConfigurationError(f"param group {j} has lr={lr0!r}; layer-wise decay needs a positive LR")
            m = _multiplier(section, lr0, base_lr)
            name = section.name if n_old == 1 else f"{section.name}/{pg.get('name', f'pg{j}')}"
            part = type(section)(name, section.lr_scale, mine, section.no_decay)
            split = float(pg.get("weight_decay", 0.0) or 0.0) > 0.0
            for pname, params, decays in part.split(split):
                group = {k: (_scale(v, m) if k in LR_KEYS else v) for k, v in pg.items() if k != "params"}
                group.update(params=params, name=pname, layer_group=section.name, lr_scale=m)
                if not decays:
                    group["weight_decay"] = 0.0
                new.append(group)
                mapping.append((j, m))
    # parameters of the optimizer that are not in the module's groups keep their group and LR
    for j, pg in enumerate(old):
        rest = [p for p in pg["params"] if id(p) not in in_sections]
        if rest:
            group = {k: v for k, v in pg.items() if k != "params"}
            group.update(params=rest, name=pg.get("name", f"pg{j}"), lr_scale=1.0)
            new.append(group)
            mapping.append((j, 1.0))
    optimizer.param_groups.clear()
    for group in new:
        optimizer.add_param_group(group)
    for sched in schedulers:
        expand_scheduler(sched, mapping, n_old)
    return optimizer.param_groups


def _multiplier(section: Section, lr0: float, base_lr: float | None) -> float:
    """Factor turning a param group's LR ``lr0`` into the section's LR."""
    if section.head_lr is not None:
        return section.head_lr / lr0
    return (base_lr or lr0) * section.lr_scale / lr0


def _rescale_named(
    optimizer: Optimizer, sections: Sequence[Section], base_lr: float | None, schedulers: Sequence[Any]
) -> list[dict]:
    """Apply the decay to an optimizer that already has one param group per layer group."""
    by_name = {s.name: s for s in sections}
    groups = optimizer.param_groups
    body = {s.name for s in sections if s.head_lr is None and s.name != HEAD_GROUP}
    scaled = sorted(
        {pg["layer_group"] for pg in groups if pg["layer_group"] in body and abs(float(pg.get("lr_scale", 1.0)) - 1.0) > 1e-12}
    )
    if scaled:
        raise ConfigurationError(
            f"the optimizer's layer groups already have layer-wise LRs (lr_scale != 1 for {scaled[:4]}), e.g. "
            "TransferClassifier(layer_decay=...) < 1: LayerwiseLRDecay would apply the decay twice. Fix: drop the "
            "callback, or set the module's layer_decay to 1.0 and let the callback decay."
        )
    mapping: Mapping_ = []
    for j, pg in enumerate(groups):
        section = by_name.get(pg["layer_group"])
        if section is None:
            mapping.append((j, 1.0))
            continue
        lr0 = float(pg.get("initial_lr", pg["lr"]))
        if section.name == HEAD_GROUP or section.head_lr is not None:
            m = section.head_lr / lr0 if section.head_lr is not None else section.lr_scale
        else:
            m = section.lr_scale * ((base_lr / lr0) if base_lr else 1.0)
        for k in LR_KEYS:
            if k in pg:
                pg[k] = _scale(pg[k], m)
        pg["lr_scale"] = float(pg.get("lr_scale", 1.0)) * m
        mapping.append((j, m))
    for sched in schedulers:
        expand_scheduler(sched, mapping, len(groups))
    return groups


def _place_frozen(sections: Sequence[Section], owner_old: dict[int, int], n_old: int) -> None:
    """Frozen parameters left out of the optimizer join the old param group their layer group is in
    (or the nearest layer group's), so they train with those hyperparameters once unfrozen."""
    where: list[int | None] = []
    for s in sections:
        present = [owner_old[id(p)] for _, p in s.params if id(p) in owner_old]
        where.append(max(set(present), key=present.count) if present else None)
    for i, s in enumerate(sections):
        frozen = [(n, p) for n, p in s.params if id(p) not in owner_old and not p.requires_grad]
        if not frozen:
            continue
        target = where[i]
        if target is None:
            near = sorted((abs(j - i), j) for j, w in enumerate(where) if w is not None and sections[j].head_lr is None
                          and sections[j].name != HEAD_GROUP)
            target = where[near[0][1]] if near else (0 if n_old == 1 else None)
        if target is None:
            raise ConfigurationError(
                f"{len(frozen)} frozen parameter(s) (e.g. {[n for n, _ in frozen[:3]]}) are not in the optimizer, "
                f"which has {n_old} param groups and none for the backbone, so tl_lightning cannot tell which "
                "hyperparameters they take. Fix: build the optimizer over all parameters."
            )
        for _, p in frozen:
            owner_old[id(p)] = target
