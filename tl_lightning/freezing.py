"""Freezing: which parameters train, and what frozen layers cost (used by modules and callbacks).

Freezing only flips ``requires_grad``: a frozen parameter stays in its optimizer param group,
gets no ``.grad`` and therefore no optimizer state and no weight decay. A frozen *prefix* of
the network then builds no autograd graph at all, because neither its inputs nor its
parameters require grad. Frozen BatchNorm layers are put in eval mode, so they neither use
batch statistics nor update their running statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tl_lightning.backbones._base import LayerGroup

__all__ = [
    "eval_mode",
    "norm_modules_with_stats",
    "set_requires_grad",
    "frozen_norm_modules",
    "set_norm_eval",
    "is_frozen",
    "no_grad_if_frozen",
]

_NORM_WITH_STATS = (_BatchNorm, nn.modules.instancenorm._InstanceNorm)


def set_requires_grad(params: Iterable[nn.Parameter], flag: bool) -> int:
    """Set ``requires_grad`` on ``params``; return how many scalar parameters changed."""
    changed = 0
    for p in params:
        if p.requires_grad != flag:
            p.requires_grad_(flag)
            changed += p.numel()
        if not flag:
            p.grad = None
    return changed


def _has_running_stats(m: nn.Module) -> bool:
    return isinstance(m, _NORM_WITH_STATS) and getattr(m, "track_running_stats", False)


def norm_modules_with_stats(root: nn.Module) -> list[nn.Module]:
    """Every norm layer under ``root`` that keeps running statistics (BatchNorm, tracked InstanceNorm)."""
    return [m for m in root.modules() if _has_running_stats(m)]


def frozen_norm_modules(root: nn.Module, groups: Sequence[LayerGroup]) -> list[nn.Module]:
    """Norm layers with running statistics that belong wholly to ``groups``.

    A norm layer belongs to the groups when it sits under one of their modules, or when all its
    (non-empty) parameters are group parameters (groups made of bare parameters).
    """
    ids = {id(p) for g in groups for p in g.parameters()}
    found: dict[int, nn.Module] = {}
    for g in groups:
        for _, mod in g.modules:
            for m in mod.modules():
                if _has_running_stats(m):
                    found[id(m)] = m
    for m in root.modules():
        if _has_running_stats(m) and id(m) not in found:
            own = list(m.parameters(recurse=False))
            if own and all(id(p) in ids for p in own):
                found[id(m)] = m
    return list(found.values())


def set_norm_eval(modules: Iterable[nn.Module]) -> None:
    """Put norm layers in eval mode (running statistics used, not updated)."""
    for m in modules:
        m.training = False


def is_frozen(module: nn.Module) -> bool:
    """Whether no parameter of ``module`` requires grad (``False`` for a parameterless module)."""
    any_param = False
    for p in module.parameters():
        any_param = True
        if p.requires_grad:
            return False
    return any_param


@contextlib.contextmanager
def no_grad_if_frozen(module: nn.Module) -> Iterator[bool]:
    """Run the block under ``torch.no_grad()`` when every parameter of ``module`` is frozen.

    The fast path for the head-only phase: a module (e.g. ``TransferClassifier``) wraps its
    trunk call in it, so a fully frozen trunk builds no autograd graph and keeps no activations,
    whatever its inputs are. Yields whether grad was disabled.

    Example:
        >>> trunk, head = nn.Linear(4, 4).requires_grad_(False), nn.Linear(4, 2)
        >>> with no_grad_if_frozen(trunk) as off:
        ...     feats = trunk(torch.randn(2, 4))
        >>> off, feats.requires_grad, head(feats).requires_grad
        (True, False, True)
    """
    frozen = is_frozen(module) and torch.is_grad_enabled()
    if frozen:
        with torch.no_grad():
            yield True
    else:
        yield False


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode inside the block and restore every submodule's own mode after it.

    Module by module, not ``module.train(was_training)``: a model mid-training holds frozen
    BatchNorm layers in eval mode on purpose, and they must stay so.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> _ = net[1].eval()  # a frozen BatchNorm inside a model in train mode
        >>> with eval_mode(net):
        ...     net.training, net[1].training
        (False, False)
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
