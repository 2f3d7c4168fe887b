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
from tl_lightning.optim._param_groups import HEAD_GROUP, NO_DECAY_SUFFIX, is_no_decay_param, layerwise_lrs

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
    schedulers: Sequence[Any] = (),
    no_decay: Callable[[str, nn.Parameter], bool] | None = is_no_decay_param,
    include_frozen: bool = True,
) -> list[dict]:
    """Re-partition ``optimizer`` in place into named layer-wise groups with decayed LRs.

    Group ``i`` of ``L`` gets ``lr * decay ** (L - 1 - i)`` where ``lr`` is ``base_lr`` or, by
    default, the optimizer's own LR; the head gets ``head_lr`` (absolute) or ``head_lr_scale``
    times the base. Every LR-like value of the group (``lr``, ``initial_lr``, ``max_lr``,
    ``min_lr``) is scaled alike, and so are the attached ``schedulers``' per-group lists, so
    OneCycleLR, LambdaLR, ReduceLROnPlateau, SequentialLR etc. keep working. Parameters where
    ``no_decay(name, p)`` holds (biases, norms, embeddings, tokens) go to ``<name>/no_decay``
    groups with ``weight_decay=0`` when their original group had weight decay.

    Args:
        optimizer: Any torch optimizer, already built (possibly with a scheduler attached).
        layer_groups: Layer groups, input -> output.
        decay: Multiplicative decay per group, in (0, 1].
        head: ``(name, parameter)`` pairs of the head.
        base_lr: LR of the top layer group; ``None`` keeps the optimizer's LR.
        head_lr: Absolute LR of the head (exclusive with ``head_lr_scale``).
        head_lr_scale: Head LR as a multiple of the base LR.
        schedulers: Schedulers attached to ``optimizer``.
        no_decay: Predicate for parameters exempt from weight decay; ``None`` for none.
        include_frozen: Add frozen (``requires_grad=False``) layer-group parameters that the
            optimizer left out (``AdamW(filter(lambda p: p.requires_grad, ...))``), so that
            unfreezing later never needs a new param group. Needs a single original group.

    Returns:
        The new ``optimizer.param_groups``.

    Example:
        >>> import torch
        >>> from tl_lightning.backbones._base import layer_groups_from_prefixes
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> groups = layer_groups_from_prefixes(net, [("a", ["0"]), ("b", ["1"])])
        >>> opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
        >>> pgs = apply_layerwise_lr_decay(opt, groups, decay=0.5, head=net[2].named_parameters())
        >>> [(g["name"], g["lr"]) for g in pgs]  # doctest: +NORMALIZE_WHITESPACE
        [('a', 0.0005), ('a/no_decay', 0.0005), ('b', 0.001), ('b/no_decay', 0.001),
         ('head', 0.001), ('head/no_decay', 0.001)]
    """
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
        raise ConfigurationError(f"layer-wise LR decay must be in (0, 1], got {decay!r}; 1.0 disables decay")
    if base_lr is not None and base_lr <= 0:
        raise ConfigurationError(f"base_lr must be > 0, got {base_lr!r}")
    if head_lr is not None and head_lr <= 0:
        raise ConfigurationError(f"head_lr must be > 0, got {head_lr!r}")
    if head_lr_scale <= 0:
        raise ConfigurationError(f"head_lr_scale must be > 0, got {head_lr_scale!r}")
    if head_lr is not None and head_lr_scale != 1.0:
        raise ConfigurationError("give head_lr (absolute) or head_lr_scale (relative), not both")
    old = list(optimizer.param_groups)
    n_old = len(old)
    rel = layerwise_lrs(len(layer_groups), 1.0, decay)
    sections: list[tuple[str, list[tuple[str, nn.Parameter]], Callable[[float], float]]] = []
    for g, r in zip(layer_groups, rel):
        sections.append((g.name, list(g.named_parameters()), lambda lr0, r=r: (base_lr or lr0) * r / lr0))
    head = list(head)
    if head:
        if head_lr is not None:
            sections.append((HEAD_GROUP, head, lambda lr0: head_lr / lr0))
        else:
            sections.append((HEAD_GROUP, head, lambda lr0: (base_lr or lr0) * head_lr_scale / lr0))
    owner_old = {id(p): j for j, pg in enumerate(old) for p in pg["params"]}
    in_sections = {id(p) for _, named, _ in sections for _, p in named}
    missing = [(n, p) for _, named, _ in sections for n, p in named if id(p) not in owner_old]
    if missing and include_frozen:
        frozen = [(n, p) for n, p in missing if not p.requires_grad]
        if frozen and n_old != 1:
            raise ConfigurationError(
                f"{len(frozen)} frozen parameter(s) (e.g. {[n for n, _ in frozen[:3]]}) are not in the optimizer, "
                f"which has {n_old} param groups, so tl_lightning cannot tell which hyperparameters they take. "
                "Fix: build the optimizer over all parameters."
            )
        for _, p in frozen:
            owner_old[id(p)] = 0
    new: list[dict] = []
    mapping: Mapping_ = []
    for sname, named, mult_of in sections:
        for j, pg in enumerate(old):
            mine = [(n, p) for n, p in named if owner_old.get(id(p)) == j]
            if not mine:
                continue
            lr0 = float(pg.get("initial_lr", pg["lr"]))
            if lr0 <= 0:
                raise ConfigurationError(f"param group {j} has lr={lr0!r}; layer-wise decay needs a positive LR")
            m = mult_of(lr0)
            name = sname if n_old == 1 else f"{sname}/{pg.get('name', f'pg{j}')}"
            split = no_decay is not None and float(pg.get("weight_decay", 0.0) or 0.0) > 0.0
            parts = [(name, [p for n, p in mine if not (split and no_decay(n, p))], None)]
            if split:
                parts.append((name + NO_DECAY_SUFFIX, [p for n, p in mine if no_decay(n, p)], 0.0))
            for pname, params, wd in parts:
                if not params:
                    continue
                group = {k: (_scale(v, m) if k in LR_KEYS else v) for k, v in pg.items() if k != "params"}
                group.update(params=params, name=pname, layer_group=sname, lr_scale=m)
                if wd is not None:
                    group["weight_decay"] = wd
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
