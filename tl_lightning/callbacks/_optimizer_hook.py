"""Run a function on a module's optimizers right after ``configure_optimizers`` builds them.

The fine-tuning callbacks re-partition a user's optimizer into one named param group per layer
group. That must happen right after the optimizer is built and before a checkpoint's optimizer
state is loaded into it (which needs the final group layout), and it must work with whatever
``configure_optimizers`` returns. :class:`ConfigureOptimizersHook` wraps the module's method as an
instance attribute (Lightning looks the hook up with ``getattr`` when it builds optimizers) and
gives the original back on teardown or after an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

__all__ = ["ConfigureOptimizersHook", "collect_optimizers"]


def collect_optimizers(obj: Any) -> tuple[list[Optimizer], list[Any]]:
    """The optimizers and schedulers in any return form of ``configure_optimizers``."""
    opts: list[Optimizer] = []
    scheds: list[Any] = []

    def walk(o: Any) -> None:
        if isinstance(o, Optimizer):
            opts.append(o)
        elif isinstance(o, (LRScheduler, ReduceLROnPlateau)):
            scheds.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return opts, scheds


class ConfigureOptimizersHook:
    """Wraps ``pl_module.configure_optimizers`` so ``fn(pl_module, output)`` runs on its output."""

    def __init__(self, fn: Callable[[pl.LightningModule, Any], None]) -> None:
        self.fn = fn
        self._wrapped: tuple[pl.LightningModule, Any] | None = None

    def attach(self, pl_module: pl.LightningModule) -> None:
        """Wrap (idempotent for the same module; a left-over wrap of another module is undone first)."""
        if self._wrapped is not None:
            if self._wrapped[0] is pl_module:
                return
            self.detach()
        original: Callable[[], Any] = pl_module.configure_optimizers
        had_instance_attr = "configure_optimizers" in vars(pl_module)

        def configure_optimizers() -> Any:
            out = original()
            self.fn(pl_module, out)
            return out

        pl_module.configure_optimizers = configure_optimizers  # type: ignore[method-assign]
        self._wrapped = (pl_module, original if had_instance_attr else None)

    def detach(self) -> None:
        """Give the module its own ``configure_optimizers`` back."""
        if self._wrapped is None:
            return
        module, previous = self._wrapped
        if previous is None:
            vars(module).pop("configure_optimizers", None)
        else:
            module.configure_optimizers = previous  # type: ignore[method-assign]
        self._wrapped = None
