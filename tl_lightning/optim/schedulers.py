"""Learning-rate schedules for transfer learning, and :func:`build_scheduler` for partials.

The schedules are ``LambdaLR`` multipliers: each param group keeps its own base LR and is
scaled by the same factor, so layer-wise LR ratios (discriminative fine-tuning, LLRD) hold at
every step. Use them as Hydra partials::

    scheduler:
      _target_: tl_lightning.optim.warmup_cosine
      _partial_: true
      warmup_fraction: 0.1

and :class:`~tl_lightning.TransferClassifier` calls them with the optimizer and the number of
optimizer steps of the run (``total_steps``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from tl_lightning.errors import ConfigurationError

__all__ = ["warmup_cosine", "slanted_triangular", "constant", "build_scheduler"]


def _check_total(total_steps: int) -> None:
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps <= 0:
        raise ConfigurationError(
            f"total_steps must be a positive int, got {total_steps!r}; with a Trainer pass "
            "trainer.estimated_stepping_batches (set max_epochs or max_steps)"
        )


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_fraction: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup from 0 then cosine decay to ``min_lr_ratio`` times each group's LR.

    Args:
        optimizer: The optimizer; every group is scaled by the same factor.
        total_steps: Number of scheduler steps of the run.
        warmup_steps: Warmup length in steps (exclusive with ``warmup_fraction``).
        warmup_fraction: Warmup length as a fraction of ``total_steps``.
        min_lr_ratio: Final LR as a fraction of each group's initial LR.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([{"params": [torch.zeros(1)], "lr": 1.0}, {"params": [torch.zeros(1)], "lr": 0.1}])
        >>> sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
        >>> [round(g["lr"], 3) for g in opt.param_groups]  # step 0 of the warmup
        [0.0, 0.0]
    """
    _check_total(total_steps)
    if warmup_steps and warmup_fraction:
        raise ConfigurationError(
            f"give warmup_steps ({warmup_steps!r}) or warmup_fraction ({warmup_fraction!r}), not both"
        )
    if warmup_steps < 0:
        raise ConfigurationError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ConfigurationError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigurationError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    warmup = warmup_steps or int(round(warmup_fraction * total_steps))
    if warmup >= total_steps:
        raise ConfigurationError(f"warmup ({warmup} steps) must be shorter than total_steps ({total_steps})")

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def slanted_triangular(optimizer: Optimizer, total_steps: int, cut_frac: float = 0.1, ratio: float = 32) -> LambdaLR:
    """ULMFiT's slanted triangular LR (Howard & Ruder, 2018): short linear rise, long linear decay.

    The factor goes from ``1/ratio`` up to 1 over the first ``cut_frac`` of the steps and back
    down to ``1/ratio`` at ``total_steps``; each group is scaled by it (so ULMFiT's
    discriminative ``lr / 2.6`` per layer survives).

    Args:
        optimizer: The optimizer.
        total_steps: Number of scheduler steps of the run.
        cut_frac: Fraction of the steps spent increasing the LR.
        ratio: How much smaller the lowest LR is than the peak.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1)], lr=1.0)
        >>> sched = slanted_triangular(opt, total_steps=100, cut_frac=0.1, ratio=32)
        >>> round(opt.param_groups[0]["lr"], 4)
        0.0312
    """
    _check_total(total_steps)
    if not 0.0 < cut_frac < 1.0:
        raise ConfigurationError(f"cut_frac must be in (0, 1), got {cut_frac!r}")
    if ratio < 1:
        raise ConfigurationError(f"ratio must be >= 1, got {ratio!r}")
    cut = max(1, int(math.floor(total_steps * cut_frac)))

    def factor(step: int) -> float:
        t = min(step, total_steps)
        if t < cut:
            p = t / cut
        else:
            p = 1.0 - (t - cut) / max(1, total_steps - cut)
        return (1.0 + p * (ratio - 1.0)) / ratio

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer) -> LambdaLR:
    """Keep every group at its initial LR (useful as an explicit "no schedule" in configs).

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1)], lr=0.5)
        >>> constant(opt).get_last_lr()
        [0.5]
    """
    return LambdaLR(optimizer, lambda step: 1.0)


def _target_and_keywords(factory: Callable[..., Any]) -> tuple[Callable[..., Any], dict[str, Any], int]:
    """Unwrap (nested) ``functools.partial`` objects: the callable, its bound keywords and #positional args."""
    keywords: dict[str, Any] = {}
    n_args = 0
    target = factory
    while isinstance(target, functools.partial):
        keywords = {**target.keywords, **keywords}
        n_args += len(target.args)
        target = target.func
    return target, keywords, n_args


def _accepts(target: Callable[..., Any], name: str) -> bool:
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return False
    return name in sig.parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def build_scheduler(
    scheduler: Callable[..., Any], optimizer: Optimizer, total_steps: int | None
) -> LRScheduler | ReduceLROnPlateau:
    """Call a scheduler partial with ``optimizer``, filling in what the run knows.

    * ``total_steps`` is supplied when the target accepts it and the partial does not bind it
      (the schedules of this module, ``OneCycleLR``).
    * ``OneCycleLR`` also gets ``max_lr = [each group's lr]`` unless given, so layer-wise LR
      ratios are kept (a single float would flatten them).
    * ``CosineAnnealingLR`` gets ``T_max = total_steps`` unless given.

    Args:
        scheduler: A callable taking the optimizer first (``functools.partial`` or Hydra
            ``_partial_: true``), e.g. ``partial(warmup_cosine, warmup_fraction=0.1)``.
        optimizer: The optimizer to schedule.
        total_steps: Optimizer steps of the run (``trainer.estimated_stepping_batches``);
            required only when the schedule needs it.

    Returns:
        The scheduler instance.

    Example:
        >>> import functools, torch
        >>> opt = torch.optim.SGD([{"params": [torch.zeros(1)], "lr": 0.1}, {"params": [torch.zeros(1)], "lr": 1.0}])
        >>> s = build_scheduler(functools.partial(torch.optim.lr_scheduler.OneCycleLR), opt, total_steps=10)
        >>> s.total_steps, [g["max_lr"] for g in opt.param_groups]
        (10, [0.1, 1.0])
    """
    if not callable(scheduler):
        raise ConfigurationError(
            f"scheduler must be a callable taking the optimizer (a functools.partial or a Hydra config "
            f"with `_partial_: true`), got {type(scheduler).__name__}: {scheduler!r}"
        )
    target, bound, n_args = _target_and_keywords(scheduler)
    extra: dict[str, Any] = {}

    def need(name: str) -> bool:
        return name not in bound and _accepts(target, name)

    def steps() -> int:
        if total_steps is None or (isinstance(total_steps, float) and not math.isfinite(total_steps)):
            raise ConfigurationError(
                f"scheduler {getattr(target, '__name__', target)!r} needs the number of training steps, which "
                "is unknown (no max_epochs / max_steps on the Trainer?). Fix: set trainer.max_epochs or "
                "max_steps, or bind total_steps in the scheduler partial."
            )
        return int(total_steps)

    is_class = inspect.isclass(target)
    if is_class and issubclass(target, OneCycleLR):
        if "max_lr" not in bound and n_args == 0:
            extra["max_lr"] = [g["lr"] for g in optimizer.param_groups]
        if "total_steps" not in bound and "epochs" not in bound:
            extra["total_steps"] = steps()
    elif is_class and issubclass(target, CosineAnnealingLR):
        if "T_max" not in bound and n_args == 0:
            extra["T_max"] = steps()
    elif n_args == 0 and need("total_steps"):
        extra["total_steps"] = steps()
    return scheduler(optimizer, **extra)
