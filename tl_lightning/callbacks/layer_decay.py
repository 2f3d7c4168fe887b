"""Layer-wise LR decay for any LightningModule and any torch optimizer / scheduler."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from tl_lightning._checks import check_number
from tl_lightning.callbacks._optimizer_hook import ConfigureOptimizersHook, collect_optimizers
from tl_lightning._targets import GroupsSpec, HeadSpec, resolve_targets, shared_groups
from tl_lightning.describe import log_layer_groups_once
from tl_lightning.errors import ConfigurationError
from tl_lightning.optim._param_groups import check_lr_arguments
from tl_lightning.optim._repartition import apply_layerwise_lr_decay

__all__ = ["LayerwiseLRDecay"]


def _decay_everything(name: str, param: Any) -> bool:
    return False


class LayerwiseLRDecay(Callback):
    """Re-partition the module's own optimizer into named layer-wise groups with decayed LRs.

    Group ``i`` of ``L`` trains at ``base_lr * backbone_lr_scale * decay ** (L - 1 - i)``
    (``base_lr`` defaults to the optimizer's LR), the head at ``head_lr`` or ``head_lr_scale *
    base_lr``; the parameters that take no weight decay (1-d tensors and what the model declares,
    e.g. timm's ``no_weight_decay()``) go to ``/no_decay`` groups. Works with whatever
    ``configure_optimizers`` returns (an optimizer, lists, dicts, with or without schedulers): the
    callback wraps it so the optimizer is re-partitioned right after it is built, before a
    checkpoint's optimizer state is loaded, and the schedulers' per-group state is expanded to
    match. Param groups are named after the layer groups (``lr-AdamW/layer3`` in
    LearningRateMonitor) and include frozen parameters (left out of an optimizer built from
    trainable parameters only: they join the group of their layer group's neighbours), so
    :class:`~tl_lightning.callbacks.GradualUnfreezing` never needs a new group.

    A module whose optimizer already has one group per layer group (``TransferClassifier`` with
    ``layer_decay=1.0``) gets the decay applied to those groups; one whose groups already carry
    a decay (``layer_decay < 1``) is refused with an error (the decay would apply twice).

    Args:
        decay: Per-group LR decay in (0, 1]; 1.0 keeps every group at the same LR.
        base_lr: LR of the top layer group; ``None`` keeps the optimizer's LR.
        head_lr: Absolute head LR (exclusive with ``head_lr_scale``).
        head_lr_scale: Head LR relative to ``base_lr``.
        backbone_lr_scale: Every layer group's LR times this: ``backbone_lr_scale=0.1`` with
            ``decay=1.0`` is "the backbone at lr/10, the head at lr".
        groups: Where the layer groups are (attribute path, regex patterns; default: the
            ``groups=`` of another tl_lightning callback of the Trainer, else
            ``pl_module.layer_groups()`` or its ``Backbone``).
        head: Layer-group names that form the head (``"auto"``: the groups the model declares).
        no_decay_filter: Whether the parameters that take no weight decay go to ``/no_decay``
            groups (``False``: every parameter keeps the optimizer's weight decay).

    Example:
        >>> cb = LayerwiseLRDecay(decay=0.75, groups="model", head_lr_scale=10.0)
        >>> backbone_at_lr_over_10 = LayerwiseLRDecay(decay=1.0, backbone_lr_scale=0.1)
        >>> # Trainer(callbacks=[cb, GradualUnfreezing(unfreeze_every=1)])  (groups are shared)
    """

    #: other tl_lightning callbacks of the Trainer see this callback's ``groups=``
    shares_layer_groups = True

    def __init__(
        self,
        decay: float = 0.75,
        *,
        base_lr: float | None = None,
        head_lr: float | None = None,
        head_lr_scale: float = 1.0,
        backbone_lr_scale: float = 1.0,
        groups: GroupsSpec = None,
        head: HeadSpec = "auto",
        no_decay_filter: bool = True,
    ) -> None:
        super().__init__()
        check_lr_arguments(decay=decay, base_lr=base_lr, head_lr=head_lr, head_lr_scale=head_lr_scale)
        check_number("backbone_lr_scale", backbone_lr_scale, low=0.0, low_open=True)
        self.decay = float(decay)
        self.base_lr = base_lr
        self.head_lr = head_lr
        self.head_lr_scale = head_lr_scale
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.groups = groups
        self.head = head
        self.no_decay_filter = no_decay_filter
        self._hook = ConfigureOptimizersHook(self._repartition)
        self._trainer: pl.Trainer | None = None
        self._targets: Any = None
        self.applied = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(groups=str(self.groups), decay=self.decay)

    def _repartition(self, pl_module: pl.LightningModule, out: Any) -> None:
        opts, scheds = collect_optimizers(out)
        if not opts:
            raise ConfigurationError(
                f"LayerwiseLRDecay: {type(pl_module).__name__}.configure_optimizers returned no optimizer"
            )
        targets = resolve_targets(pl_module, shared_groups(self._trainer, self, self.groups), self.head)
        self._targets = targets
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
                backbone_lr_scale=self.backbone_lr_scale,
                schedulers=mine,
                # None: each layer group's declared no-weight-decay set (1-d + the family's own)
                no_decay=None if self.no_decay_filter else _decay_everything,
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
        if stage == "fit":
            self._trainer = trainer
            self._hook.attach(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._targets is not None:
            log_layer_groups_once(trainer, pl_module, self._targets)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._hook.detach()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._hook.detach()
