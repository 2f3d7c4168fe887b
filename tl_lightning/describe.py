"""See a model's layer groups before training: what each holds, whether it trains, at which LR.

:func:`describe_layer_groups` resolves the layer groups exactly as the fine-tuning callbacks do
(``groups=`` attribute path or regexes, the module's ``layer_groups()``, its Backbone, or the
grouping of a registered model family) and returns a table, input -> output, with the head last.
The callbacks log the same table once when training starts, so what ``schedule={1: 4}`` means
("the top 4 groups") is visible before and during the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from tl_lightning.backbones._base import LayerGroup
from tl_lightning._targets import FineTuneTargets, GroupsSpec, HeadSpec, resolve_targets

__all__ = ["describe_layer_groups", "LayerGroupTable", "log_layer_groups_once"]

_NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class LayerGroupTable:
    """The rows of :func:`describe_layer_groups`; ``str(table)`` is the printed table.

    Attributes:
        rows: One dict per group, input -> output, then the head: ``index`` (``None`` for the
            head), ``name``, ``params`` (scalar count), ``state`` (``trainable`` / ``frozen`` /
            ``partly frozen``), ``lr`` (the optimizer's LR(s) for the group, when known),
            ``norms`` (norm layers in the group, e.g. ``"20 BatchNorm2d"``).
        notes: Decisions of the grouping a user should see (a container split into blocks).
    """

    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        """Scheduled group names, input -> output (the head excluded)."""
        return [r["name"] for r in self.rows if r["index"] is not None]

    def __str__(self) -> str:
        header = ("#", "layer group", "params", "state", "lr", "norm layers")
        lines = [
            (
                "head" if r["index"] is None else str(r["index"]),
                r["name"],
                f"{r['params']:,}",
                r["state"],
                r["lr"] or "-",
                r["norms"] or "-",
            )
            for r in self.rows
        ]
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        fmt = "  ".join(f"{{:{'>' if i in (0, 2) else '<'}{w}}}" for i, w in enumerate(widths))
        out = [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line).rstrip() for line in lines]
        out.append("input -> output; the numbers are what schedule={epoch: k} / negative indices count (-1 = top)")
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def to_markdown(self) -> str:
        """The table as GitHub markdown."""
        lines = ["| # | layer group | params | state | lr | norm layers |", "|---|---|---:|---|---|---|"]
        for r in self.rows:
            idx = "head" if r["index"] is None else r["index"]
            lines.append(f"| {idx} | {r['name']} | {r['params']:,} | {r['state']} | {r['lr'] or '-'} | {r['norms'] or '-'} |")
        return "\n".join(lines + [f"\nNote: {n}" for n in self.notes])


def _state(params: Sequence[nn.Parameter]) -> str:
    flags = {p.requires_grad for p in params}
    if flags == {True}:
        return "trainable"
    if flags == {False}:
        return "frozen"
    return "partly frozen"


def _lrs(params: Sequence[nn.Parameter], optimizers: Sequence[Optimizer]) -> str:
    ids = {id(p) for p in params}
    found = sorted(
        {float(pg["lr"]) for opt in optimizers for pg in opt.param_groups if any(id(p) in ids for p in pg["params"])}
    )
    return "/".join(f"{lr:.3g}" for lr in found)


def _norms(modules: Sequence[tuple[str, nn.Module]], params: Sequence[nn.Parameter], root: nn.Module) -> str:
    ids = {id(p) for p in params}
    seen: dict[int, nn.Module] = {}
    for _, mod in modules:
        for m in mod.modules():
            if isinstance(m, _NORMS):
                seen[id(m)] = m
    for m in root.modules():
        own = list(m.parameters(recurse=False))
        if isinstance(m, _NORMS) and own and all(id(p) in ids for p in own):
            seen[id(m)] = m
    counts: dict[str, int] = {}
    for m in seen.values():
        counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def _row(index: int | None, group: LayerGroup, optimizers: Sequence[Optimizer], root: nn.Module) -> dict[str, Any]:
    params = list(group.parameters())
    return {
        "index": index,
        "name": group.name,
        "params": sum(p.numel() for p in params),
        "state": _state(params),
        "lr": _lrs(params, optimizers),
        "norms": _norms(group.modules, params, root),
    }


def table_of(targets: FineTuneTargets, root: nn.Module, optimizers: Sequence[Optimizer] = ()) -> LayerGroupTable:
    """The table of already resolved targets (what the callbacks log at fit start)."""
    rows = [_row(i, g, optimizers, root) for i, g in enumerate(targets.groups)]
    if targets.head:
        head = LayerGroup("head", tuple(targets.head))
        row = _row(None, head, optimizers, root)
        parts = sorted({".".join(n.split(".")[:-1][:2]) or n for n, _ in targets.head})
        row["name"] = "head (" + ", ".join(parts[:3]) + (", ..." if len(parts) > 3 else "") + ")"
        rows.append(row)
    return LayerGroupTable(rows, list(targets.notes))


def describe_layer_groups(
    module: nn.Module,
    groups: GroupsSpec = None,
    head: HeadSpec = "auto",
    optimizer: Optimizer | Sequence[Optimizer] | None = None,
) -> LayerGroupTable:
    """The layer groups of a module as the fine-tuning callbacks will see them, as a table.

    Args:
        module: A LightningModule (yours or ``TransferClassifier``), any ``nn.Module`` (a timm /
            torchvision / transformers model) or a tl_lightning Backbone.
        groups: As for the callbacks: an attribute path (``"model"``), ``{name: regex}``
            patterns, or ``None`` (the module's ``layer_groups()``, its Backbone, or the module
            itself grouped by its family).
        head: As for the callbacks (``"auto"``: what the model family declares as its head,
            plus every parameter in no group).
        optimizer: An optimizer (or several) to read each group's LR from. For a
            ``TransferClassifier`` without one, its own param groups are used.

    Returns:
        A :class:`LayerGroupTable`; ``print(table)`` shows it.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18()
        >>> table = describe_layer_groups(net)
        >>> table.names()
        ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
        >>> print(str(table).splitlines()[2])
           0  stem                 9,536  trainable  -   1 BatchNorm2d
    """
    if optimizer is None:
        optimizers: list[Optimizer] = []
        param_groups = getattr(module, "param_groups", None)
        if callable(param_groups):
            import torch

            optimizers = [torch.optim.SGD(param_groups(), lr=1.0)]
    else:
        optimizers = [optimizer] if isinstance(optimizer, Optimizer) else list(optimizer)
    has_own = groups is not None or callable(getattr(module, "layer_groups", None))
    if not has_own and not _holds_backbone(module):
        holder = nn.Module()
        holder.model = module
        targets = resolve_targets(holder, "model", head)
        return table_of(targets, holder, optimizers)
    return table_of(resolve_targets(module, groups, head), module, optimizers)


def _holds_backbone(module: nn.Module) -> bool:
    from tl_lightning.backbones._base import Backbone

    return any(isinstance(m, Backbone) for m in module.modules())


def log_layer_groups_once(trainer: Any, pl_module: nn.Module, targets: FineTuneTargets) -> None:
    """Log the layer-group table once per fit (the first tl_lightning callback or module to ask wins)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    if getattr(trainer, "_tl_layer_table_logged", False):
        return
    trainer._tl_layer_table_logged = True
    table = table_of(targets, pl_module, list(getattr(trainer, "optimizers", []) or []))
    rank_zero_info(f"[tl_lightning] layer groups of {type(pl_module).__name__}:\n{table}")
