"""Optimizer parameter groups named after layer groups, with layer-wise LR decay."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import nn

from tl_lightning.backbones._base import LayerGroup
from tl_lightning.errors import ConfigurationError

__all__ = ["layerwise_param_groups", "layerwise_lrs", "is_no_decay_param", "NO_DECAY_SUFFIX", "HEAD_GROUP"]

NO_DECAY_SUFFIX = "/no_decay"
HEAD_GROUP = "head"

_NO_DECAY_NAME_HINTS = ("bias", "norm", "bn", "ln", "embed", "token", "pos_embed", "relative_position")


def is_no_decay_param(name: str, param: nn.Parameter) -> bool:
    """Whether weight decay should be skipped: biases, norm weights, embeddings and tokens.

    1-d tensors (biases, norm scales, layer-scale gammas) never decay; named embeddings
    (``word_embeddings``, ``pos_embed``, ``position_embeddings``) and tokens (``cls_token``,
    ``mask_token``) do not either.
    """
    if param.ndim <= 1:
        return True
    leaf_path = name.lower()
    return any(h in leaf_path for h in ("embed", "token", "relative_position_bias_table"))


def layerwise_lrs(num_groups: int, base_lr: float, decay: float) -> list[float]:
    """Learning rates ``base_lr * decay ** (L - 1 - i)`` for ``i`` in ``0..L-1`` (input -> output).

    Example:
        >>> layerwise_lrs(3, 1e-3, 0.5)
        [0.00025, 0.0005, 0.001]
    """
    if not 0.0 < decay <= 1.0:
        raise ConfigurationError(f"layer-wise LR decay must be in (0, 1], got {decay!r}; 1.0 disables decay")
    if base_lr <= 0:
        raise ConfigurationError(f"base_lr must be > 0, got {base_lr!r}")
    return [base_lr * decay ** (num_groups - 1 - i) for i in range(num_groups)]


def _split(
    named: Iterable[tuple[str, nn.Parameter]], no_decay: Callable[[str, nn.Parameter], bool]
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    decay, skip = [], []
    for n, p in named:
        (skip if no_decay(n, p) else decay).append(p)
    return decay, skip


def layerwise_param_groups(
    layer_groups: Sequence[LayerGroup],
    *,
    base_lr: float,
    decay: float = 1.0,
    head: nn.Module | Iterable[tuple[str, nn.Parameter]] | None = None,
    head_lr: float | None = None,
    weight_decay: float = 0.0,
    no_decay: Callable[[str, nn.Parameter], bool] | None = is_no_decay_param,
    head_name: str = HEAD_GROUP,
) -> list[dict]:
    """Build optimizer param groups: one named group per layer group (plus the head).

    Group ``i`` of ``L`` gets ``lr = base_lr * decay ** (L - 1 - i)``; the head gets ``head_lr``
    (default ``base_lr``). With ``weight_decay > 0`` each group is split in two: ``<name>`` with
    ``weight_decay`` and ``<name>/no_decay`` with 0 for parameters where ``no_decay(name, p)``
    holds (biases, norms, embeddings, tokens). Every group carries ``name`` (shown by
    LearningRateMonitor as ``lr-AdamW/<name>``), ``layer_group`` and ``lr_scale`` (its lr over
    ``base_lr``), and is present even when its parameters are frozen, so unfreezing never adds
    a param group and schedulers keep working.

    Args:
        layer_groups: Backbone layer groups, input -> output.
        base_lr: LR of the top (last) layer group.
        decay: Per-group multiplicative decay in (0, 1]; 1.0 gives every group ``base_lr``.
        head: The task head (module or named parameters); ``None`` for none.
        head_lr: LR of the head; defaults to ``base_lr``.
        weight_decay: Decoupled weight decay for decaying parameters.
        no_decay: Predicate selecting parameters exempt from weight decay; ``None`` exempts none.
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
    if weight_decay < 0:
        raise ConfigurationError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if head_lr is not None and head_lr <= 0:
        raise ConfigurationError(f"head_lr must be > 0, got {head_lr!r}")
    lrs = layerwise_lrs(len(layer_groups), base_lr, decay)
    sections: list[tuple[str, float, list[tuple[str, nn.Parameter]]]] = [
        (g.name, lr, list(g.named_parameters())) for g, lr in zip(layer_groups, lrs)
    ]
    if head is not None:
        named_head = list(head.named_parameters()) if isinstance(head, nn.Module) else list(head)
        sections.append((head_name, head_lr if head_lr is not None else base_lr, named_head))
    seen: set[int] = set()
    groups: list[dict] = []
    for name, lr, named in sections:
        for n, p in named:
            if id(p) in seen:
                raise ConfigurationError(f"parameter {n!r} appears in more than one group (group {name!r})")
            seen.add(id(p))
        if weight_decay > 0 and no_decay is not None:
            dec, skip = _split(named, no_decay)
        else:
            dec, skip = [p for _, p in named], []
        base = {"layer_group": name, "lr": lr, "lr_scale": lr / base_lr}
        if dec:
            groups.append({**base, "name": name, "params": dec, "weight_decay": weight_decay})
        if skip:
            groups.append({**base, "name": name + NO_DECAY_SUFFIX, "params": skip, "weight_decay": 0.0})
    return groups
