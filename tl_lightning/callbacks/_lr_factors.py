"""Per-layer-group LR factors applied only inside ``optimizer.step``: warm-up after an unfreeze, phase LR scales.

A factor multiplies a param group's LR just before the optimizer steps and the exact original
value is put back right after, so LR schedulers (OneCycleLR, LambdaLR, ReduceLROnPlateau,
recursive ones) only ever see their own values and keep working. This needs one optimizer param
group per layer group (``TransferClassifier``, ``layerwise_param_groups`` and the callbacks'
re-partitioning give that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer

from tl_lightning.backbones._base import LayerGroup
from tl_lightning.errors import ConfigurationError

__all__ = ["StepLRFactors"]


class StepLRFactors:
    """LR factors per layer group: a linear warm-up from the step a group was unfrozen, times a scale.

    Args:
        warmup_steps: Length of the warm-up (0: none). A group unfrozen at step ``s`` gets factor
            ``min(1, (step - s + 1) / warmup_steps)`` at optimizer step ``step``.
    """

    def __init__(self, warmup_steps: int = 0) -> None:
        self.warmup_steps = warmup_steps
        self.unfreeze_step: dict[str, int] = {}
        self.scale: dict[str, float] = {}
        self._handles: list[Any] = []
        self._groups: list[tuple[Optimizer, int, str]] = []
        self._saved: dict[tuple[int, int], Any] = {}
        self._step: Callable[[], int] | None = None  # set by install (a lambda would not pickle for ddp_spawn)

    def factor(self, name: str, step: int) -> float:
        """The LR factor of group ``name`` at optimizer step ``step``."""
        f = self.scale.get(name, 1.0)
        start = self.unfreeze_step.get(name)
        if start is not None and self.warmup_steps:
            f *= min(1.0, (step - start + 1) / self.warmup_steps)
        return f

    @property
    def needed(self) -> bool:
        """Whether any factor can differ from 1 (else no hooks are installed)."""
        return bool(self.warmup_steps) or any(v != 1.0 for v in self.scale.values())

    def install(
        self, optimizers: Sequence[Optimizer], groups: Sequence[LayerGroup], step: Callable[[], int], force: bool = False
    ) -> None:
        """Hook the optimizers; each param group holding layer-group parameters must hold one group only.

        Args:
            optimizers: The trainer's optimizers.
            groups: The scheduled layer groups.
            step: Returns the current optimizer step (``trainer.global_step``).
            force: Install even when no factor is needed yet (phases may set scales later).
        """
        self.remove()
        self._step = step
        if not (self.needed or force):
            return
        owner = {id(p): g.name for g in groups for p in g.parameters()}
        for opt in optimizers:
            for i, pg in enumerate(opt.param_groups):
                names = {owner.get(id(p), "<head>") for p in pg["params"]}
                scheduled = names - {"<head>"}
                if not scheduled:
                    continue
                if len(names) > 1:
                    raise ConfigurationError(
                        f"LR warm-up / phase LR scales need one optimizer param group per layer group, but param "
                        f"group {i} mixes {sorted(names)}. Fix: keep repartition=True (the default), add "
                        "LayerwiseLRDecay (decay=1.0 keeps the LRs), or build the optimizer with "
                        "tl_lightning.optim.layerwise_param_groups."
                    )
                self._groups.append((opt, i, scheduled.pop()))
            self._handles.append(opt.register_step_pre_hook(self._pre))
            self._handles.append(opt.register_step_post_hook(self._post))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._groups = []
        self._step = None

    def _pre(self, opt: Optimizer, args: Any, kwargs: Any) -> None:
        step = self._step() if self._step is not None else 0
        for o, i, name in self._groups:
            if o is opt:
                f = self.factor(name, step)
                if f != 1.0:
                    pg = opt.param_groups[i]
                    self._saved[(id(opt), i)] = pg["lr"]
                    pg["lr"] = pg["lr"] * f

    def _post(self, opt: Optimizer, args: Any, kwargs: Any) -> None:
        for (oid, i), lr in list(self._saved.items()):
            if oid == id(opt):
                opt.param_groups[i]["lr"] = lr  # the exact object back: schedulers see their own value
                del self._saved[(oid, i)]

    def state_dict(self) -> dict[str, Any]:
        return {"unfreeze_step": dict(self.unfreeze_step), "scale": dict(self.scale)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unfreeze_step = {str(k): int(v) for k, v in state.get("unfreeze_step", {}).items()}
        self.scale = {str(k): float(v) for k, v in state.get("scale", {}).items()}
