"""Layer-wise LR decay for any LightningModule and any torch optimizer / scheduler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from typing_extensions import override

from tl_lightning.callbacks._targets import GroupsSpec, HeadSpec, resolve_targets
from tl_lightning.errors import ConfigurationError
from tl_lightning.optim._repartition import apply_layerwise_lr_decay

__all__ = ["LayerwiseLRDecay"]


def _collect(obj: Any, opts: list[Optimizer], scheds: list[Any]) -> None:
    """Find the optimizers and schedulers in any return form of ``configure_optimizers``."""
    if isinstance(obj, Optimizer):
        opts.append(obj)
    elif isinstance(obj, (LRScheduler, ReduceLROnPlateau)):
        scheds.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect(v, opts, scheds)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect(v, opts, scheds)


class LayerwiseLRDecay(Callback):
    """Re-partition the module's own optimizer into named layer-wise groups with decayed LRs.

    Group ``i`` of ``L`` trains at ``base_lr * decay ** (L - 1 - i)`` (``base_lr`` defaults to
    the optimizer's LR), the head at ``head_lr`` or ``head_lr_scale * base_lr``; biases, norms,
    embeddings and tokens get no weight decay. Works with whatever ``configure_optimizers``
    returns (an optimizer, lists, dicts, with or without schedulers): the callback wraps it so
    the optimizer is re-partitioned right after it is built, before a checkpoint's optimizer
    state is loaded, and the schedulers' per-group state is expanded to match. Param groups are
    named after the layer groups (``lr-AdamW/layer3`` in LearningRateMonitor) and include frozen
    parameters, so :class:`~tl_lightning.callbacks.GradualUnfreezing` never needs a new group.

    A module whose optimizer already has layer-wise groups (``TransferClassifier`` with
    ``layer_decay``) is left alone with a warning.

    Args:
        decay: Per-group LR decay in (0, 1].
        base_lr: LR of the top layer group; ``None`` keeps the optimizer's LR.
        head_lr: Absolute head LR (exclusive with ``head_lr_scale``).
        head_lr_scale: Head LR relative to ``base_lr``.
        groups: Where the layer groups are (attribute path, regex patterns; default
            ``pl_module.layer_groups()`` or its ``Backbone``).
        head: Layer-group names that form the head (``"auto"``: see ``GradualUnfreezing``).
        no_decay_filter: Whether biases / norms / embeddings are moved to ``/no_decay`` groups.

    Example:
        >>> cb = LayerwiseLRDecay(decay=0.75, groups="model", head_lr_scale=10.0)
        >>> # Trainer(callbacks=[cb, GradualUnfreezing(groups="model", unfreeze_every=1)])
    """

    def __init__(
        self,
        decay: float = 0.75,
        *,
        base_lr: float | None = None,
        head_lr: float | None = None,
        head_lr_scale: float = 1.0,
        groups: GroupsSpec = None,
        head: HeadSpec = "auto",
        no_decay_filter: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
            raise ConfigurationError(f"decay must be in (0, 1], got {decay!r}; 1.0 disables decay")
        if base_lr is not None and not base_lr > 0:
            raise ConfigurationError(f"base_lr must be > 0, got {base_lr!r}")
        if head_lr is not None and not head_lr > 0:
            raise ConfigurationError(f"head_lr must be > 0, got {head_lr!r}")
        if not head_lr_scale > 0:
            raise ConfigurationError(f"head_lr_scale must be > 0, got {head_lr_scale!r}")
        if head_lr is not None and head_lr_scale != 1.0:
            raise ConfigurationError("give head_lr (absolute) or head_lr_scale (relative), not both")
        self.decay = float(decay)
        self.base_lr = base_lr
        self.head_lr = head_lr
        self.head_lr_scale = head_lr_scale
        self.groups = groups
        self.head = head
        self.no_decay_filter = no_decay_filter
        self._wrapped: tuple[pl.LightningModule, Any] | None = None
        self.applied = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(groups=str(self.groups), decay=self.decay)

    def _repartition(self, pl_module: pl.LightningModule, out: Any) -> None:
        opts: list[Optimizer] = []
        scheds: list[Any] = []
        _collect(out, opts, scheds)
        if not opts:
            raise ConfigurationError(
                f"LayerwiseLRDecay: {type(pl_module).__name__}.configure_optimizers returned no optimizer"
            )
        if any("layer_group" in g for o in opts for g in o.param_groups):
            rank_zero_warn(
                "LayerwiseLRDecay: the optimizer already has layer-wise param groups (e.g. TransferClassifier "
                "with layer_decay); leaving it as it is. Drop the callback or the module's layer_decay."
            )
            return
        targets = resolve_targets(pl_module, self.groups, self.head)
        from tl_lightning.optim._param_groups import is_no_decay_param

        ids = {id(p) for g in targets.groups for p in g.parameters()} | {id(p) for _, p in targets.head}
        mine_opts = [o for o in opts if any(id(p) in ids for g in o.param_groups for p in g["params"])]
        for opt in mine_opts:
            mine = [s for s in scheds if getattr(s, "optimizer", None) is opt]
            apply_layerwise_lr_decay(
                opt,
                targets.groups,
                decay=self.decay,
                head=targets.head,
                base_lr=self.base_lr,
                head_lr=self.head_lr,
                head_lr_scale=self.head_lr_scale,
                schedulers=mine,
                no_decay=is_no_decay_param if self.no_decay_filter else None,
                # frozen parameters left out of the optimizer join it only when there is one
                include_frozen=len(mine_opts) == 1,
            )
            rank_zero_info(
                "[LayerwiseLRDecay] "
                + ", ".join(f"{g['name']}: {float(g['lr']):.3g}" for g in opt.param_groups)
            )
        self.applied = True

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._wrapped is not None:
            if self._wrapped[0] is pl_module:
                return
            self._unwrap()  # left over from a fit of another module that raised before teardown
        original: Callable[[], Any] = pl_module.configure_optimizers
        had_instance_attr = "configure_optimizers" in vars(pl_module)

        def configure_optimizers() -> Any:
            out = original()
            self._repartition(pl_module, out)
            return out

        # an instance attribute: Lightning looks the hook up with getattr at optimizer creation
        pl_module.configure_optimizers = configure_optimizers  # type: ignore[method-assign]
        self._wrapped = (pl_module, original if had_instance_attr else None)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._unwrap()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._unwrap()

    def _unwrap(self) -> None:
        """Give the module its own ``configure_optimizers`` back."""
        if self._wrapped is None:
            return
        module, previous = self._wrapped
        if previous is None:
            vars(module).pop("configure_optimizers", None)
        else:
            module.configure_optimizers = previous  # type: ignore[method-assign]
        self._wrapped = None
