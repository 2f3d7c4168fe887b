"""L2-SP (Li, Grandvalet & Davoine, ICML 2018): pull the fine-tuned weights towards the pretrained ones.

The penalty is ``alpha / 2 * ||w - w0||^2`` over the backbone parameters that train (``w0``: their
pretrained values) plus ``beta / 2 * ||w||^2`` over the head. Plain weight decay pulls the backbone
towards zero, against L2-SP, so it is turned off for the backbone's param groups.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from tl_lightning._checks import check_number
from tl_lightning._targets import FineTuneTargets, GroupsSpec, HeadSpec, resolve_targets, shared_groups
from tl_lightning.callbacks._optimizer_hook import ConfigureOptimizersHook, collect_optimizers
from tl_lightning.errors import CheckpointError, ConfigurationError
from tl_lightning.optim._repartition import apply_layerwise_lr_decay

__all__ = ["L2SP"]


class L2SP(Callback):
    """L2-SP regularization for any LightningModule: ``alpha/2 ||w - w0||^2`` (backbone) + ``beta/2 ||w||^2`` (head).

    **How the penalty is applied.** Its gradient, ``alpha * (w - w0)`` for the backbone and
    ``beta * w`` for the head, is added to the parameters' gradients once per optimizer step, in
    ``on_before_optimizer_step``: after gradient accumulation, after DDP's all-reduce and, under
    16-bit AMP, after Lightning's precision plugin has unscaled the gradients (and before gradient
    clipping, like a loss term). That is exactly the gradient of ``loss + penalty``:

    * with ``accumulate_grad_batches=N`` the penalty counts once per step, not ``N`` times, and the
      weights do not change between micro-batches, so nothing is approximated;
    * under AMP it never passes through the loss scaler, so a large ``||w - w0||`` cannot overflow a
      float16 loss, and it is computed in the parameters' own dtype;
    * it needs no autograd graph over every backbone weight at every micro-batch (a loss term does),
      and it works with a user's ``training_step`` the callback cannot edit.

    A step whose backward was skipped (a ``None`` loss, e.g. ``TransferClassifier(nonfinite="skip")``)
    gets no penalty either. Optimizers that unscale inside ``step`` (fused Adam) under float16 AMP
    would see an unscaled penalty next to scaled gradients: refused with the fix.

    **Reference weights.** ``w0`` of a parameter is its value the first time it trains (before its
    first optimizer step), which for a fresh run is the pretrained value; it is kept once, on the
    parameter's device and in its dtype. Frozen parameters (frozen groups, a frozen trunk) are
    neither penalized nor copied: they cost nothing. A parameter unfrozen later (with
    :class:`~tl_lightning.callbacks.GradualUnfreezing`) has not changed while frozen, so its ``w0``
    taken then is still its pretrained value. ``w0`` lives in the callback's checkpoint state
    (tensors only, so checkpoints load with ``weights_only=True``) and is restored on resume.

    **Weight decay.** Right after ``configure_optimizers`` the backbone's param groups get
    ``weight_decay=0`` (reported once); the head keeps its own. An optimizer whose param groups
    mix backbone and other parameters with weight decay (``AdamW(self.parameters(),
    weight_decay=0.01)``) is first split into one named param group per layer group plus the head,
    each with the original hyperparameters (as :class:`~tl_lightning.callbacks.LayerwiseLRDecay`
    does, schedulers included). With Adam-type optimizers the penalty's gradient is normalized by
    the second moments like any L2 term; the paper used SGD with momentum.

    **Logging.** ``l2sp/penalty`` (the total), ``l2sp/backbone`` and ``l2sp/head`` (its parts),
    every optimizer step, on step only: computed on the device from the differences the gradient
    needs anyway, no host sync and no cross-rank reduction (the ranks' weights are identical).

    Args:
        alpha: Strength of the pull towards the pretrained weights (``>= 0``; the paper used 0.1).
        beta: Strength of the L2 penalty on the head (``>= 0``; the paper used 0.01).
        groups: Where the layer groups are (see :func:`~tl_lightning._targets.resolve_targets`;
            shared with the other tl_lightning callbacks of the Trainer).
        head: Layer-group names that belong to the head (``"auto"``: the model's declared head).
        log: Log the penalty.
        state_key: Distinguishes two instances in one Trainer.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[L2SP(alpha=0.1, beta=0.01)])  # doctest: +SKIP
        >>> trainer = pl.Trainer(callbacks=[L2SP(0.1, 0.01, groups="model"),  # a user's `self.model`
        ...                                 GradualUnfreezing(unfreeze_every=1)])  # doctest: +SKIP
    """

    #: other tl_lightning callbacks of the Trainer see this callback's ``groups=``
    shares_layer_groups = True

    def __init__(
        self,
        alpha: float = 0.1,
        beta: float = 0.01,
        *,
        groups: GroupsSpec = None,
        head: HeadSpec = "auto",
        log: bool = True,
        state_key: str | None = None,
    ) -> None:
        super().__init__()
        self.alpha = check_number("alpha", alpha, low=0.0, hint="0 turns the pull towards the pretrained weights off")
        self.beta = check_number("beta", beta, low=0.0, hint="0 turns the head's L2 penalty off")
        self.groups = groups
        self.head = head
        self.log_penalty = bool(log)
        self._key = state_key
        #: reference weights by parameter name (checkpointed)
        self._w0: dict[str, Tensor] = {}
        self._targets: FineTuneTargets | None = None
        self._backbone: list[tuple[str, nn.Parameter]] = []
        self._head: list[tuple[str, nn.Parameter]] = []
        self._hook = ConfigureOptimizersHook(self._turn_off_weight_decay)
        self._trainer: pl.Trainer | None = None
        #: param groups whose weight decay was turned off, as ``(name, previous value)``
        self.weight_decay_off: list[tuple[str, float]] = []

    # ----------------------------------------------------------------- state
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key=self._key, groups=str(self.groups))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"w0": dict(self._w0), "alpha": self.alpha, "beta": self.beta}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "w0" not in state_dict:
            raise CheckpointError("this checkpoint's L2SP state has no reference weights ('w0'); start a new run")
        self._w0 = dict(state_dict["w0"])
        if self._backbone:
            self._check_names()

    def _check_names(self) -> None:
        known = {n for n, _ in self._backbone}
        unknown = sorted(set(self._w0) - known)
        if unknown:
            raise CheckpointError(
                f"the checkpoint's L2SP reference weights are for {len(unknown)} parameter(s) this model's layer groups "
                f"do not have, e.g. {unknown[:3]}; resume with the model (and groups=) the checkpoint was trained with"
            )

    @property
    def reference_weights(self) -> dict[str, Tensor]:
        """``w0`` by parameter name: the parameters that have trained so far."""
        return dict(self._w0)

    # ----------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        self._targets = resolve_targets(pl_module, shared_groups(trainer, self, self.groups), self.head)
        self._backbone = [(n, p) for g in self._targets.groups for n, p in g.params]
        self._head = list(self._targets.head)
        if self._w0:
            self._check_names()
        self._hook.attach(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_names()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            from lightning.fabric.plugins.precision.amp import _optimizer_handles_unscaling

            fused = [type(o).__name__ for o in trainer.optimizers if _optimizer_handles_unscaling(o)]
            if fused:
                raise ConfigurationError(
                    f"L2SP adds its gradient after the AMP scaler unscales the gradients, but {fused[0]} unscales inside "
                    f"step() (fused=True) under precision={trainer.precision!r}. Fix: build the optimizer with "
                    "fused=False, or train with precision='bf16-mixed' (no scaler)"
                )

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        ws, refs = self._trainable_backbone()
        head = [p for _, p in self._head if p.requires_grad]
        if all(p.grad is None for p in ws) and all(p.grad is None for p in head):
            return  # backward was skipped: no step, no penalty
        total = None
        parts: dict[str, Tensor] = {}
        with torch.no_grad():
            if ws and self.alpha > 0:
                diffs = torch._foreach_sub(ws, refs)
                torch._foreach_add_(_grads(ws), diffs, alpha=self.alpha)
                if self.log_penalty:
                    parts["l2sp/backbone"] = 0.5 * self.alpha * _sum_of_squares(diffs)
            if head and self.beta > 0:
                torch._foreach_add_(_grads(head), head, alpha=self.beta)
                if self.log_penalty:
                    parts["l2sp/head"] = 0.5 * self.beta * _sum_of_squares(head)
        if self.log_penalty and parts:
            for name, value in parts.items():
                total = value if total is None else total + value.to(total.device)
                pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=1)
            pl_module.log("l2sp/penalty", total, on_step=True, on_epoch=False, batch_size=1)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._hook.detach()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._hook.detach()

    # ----------------------------------------------------------------- internals
    def _trainable_backbone(self) -> tuple[list[nn.Parameter], list[Tensor]]:
        ws: list[nn.Parameter] = []
        refs: list[Tensor] = []
        for name, p in self._backbone:
            if not p.requires_grad:
                continue
            ref = self._w0.get(name)
            if ref is None:
                # first step this parameter trains: its value is still the pretrained one
                ref = p.detach().clone()
                self._w0[name] = ref
            elif ref.device != p.device or ref.dtype != p.dtype:
                # restored from a checkpoint (CPU) or the module moved: once, onto the parameter's device
                if ref.shape != p.shape:
                    raise CheckpointError(
                        f"L2SP reference weight of {name!r} has shape {tuple(ref.shape)} but the parameter has "
                        f"{tuple(p.shape)}; resume with the model the checkpoint was trained with"
                    )
                ref = ref.to(device=p.device, dtype=p.dtype)
                self._w0[name] = ref
            ws.append(p)
            refs.append(ref)
        return ws, refs

    def _turn_off_weight_decay(self, pl_module: pl.LightningModule, out: Any) -> None:
        assert self._targets is not None
        opts, scheds = collect_optimizers(out)
        backbone = {id(p) for _, p in self._backbone}
        self.weight_decay_off = []
        for opt in opts:
            if any(_mixed(pg, backbone) for pg in opt.param_groups):
                apply_layerwise_lr_decay(
                    opt,
                    self._targets.groups,
                    decay=1.0,
                    head=self._targets.head,
                    schedulers=[s for s in scheds if getattr(s, "optimizer", None) is opt],
                    no_decay=_keep_weight_decay,
                    include_frozen=False,
                )
            for j, pg in enumerate(opt.param_groups):
                ids = [id(p) for p in pg["params"]]
                wd = float(pg.get("weight_decay", 0.0) or 0.0)
                if ids and wd > 0 and all(i in backbone for i in ids):
                    self.weight_decay_off.append((str(pg.get("name", f"pg{j}")), wd))
                    pg["weight_decay"] = 0.0
        if self.weight_decay_off:
            kept = sorted(
                {float(pg.get("weight_decay", 0.0) or 0.0) for o in opts for pg in o.param_groups
                 if any(id(p) not in backbone for p in pg["params"])}
            )
            rank_zero_info(
                f"[L2SP] alpha={self.alpha:g}, beta={self.beta:g}: weight decay off for the backbone's param groups "
                f"({', '.join(n for n, _ in self.weight_decay_off)}; was "
                f"{', '.join(sorted({f'{w:g}' for _, w in self.weight_decay_off}))}) since L2-SP pulls them towards "
                f"their pretrained values instead; the other groups keep theirs ({', '.join(f'{w:g}' for w in kept) or 'none'})"
            )


def _mixed(pg: dict, backbone: set[int]) -> bool:
    """A param group with weight decay that holds backbone and other parameters together."""
    if float(pg.get("weight_decay", 0.0) or 0.0) <= 0:
        return False
    inside = [id(p) in backbone for p in pg["params"]]
    return any(inside) and not all(inside)


def _keep_weight_decay(name: str, param: Any) -> bool:
    """Splitting for L2-SP keeps every parameter's weight decay as the user set it (then zeroes the backbone's)."""
    return False


def _grads(params: list[nn.Parameter]) -> list[Tensor]:
    """The parameters' gradients; a trainable parameter without one (unused this step) gets zeros."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [p.grad for p in params]  # type: ignore[misc]


def _sum_of_squares(tensors: list[Tensor]) -> Tensor:
    norms = torch._foreach_norm(tensors)
    device = norms[0].device
    return torch.stack([n.float().to(device) for n in norms]).square().sum()
