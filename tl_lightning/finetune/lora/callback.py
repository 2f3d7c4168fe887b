"""``LoRA``: low-rank adapters (Hu et al., ICLR 2022) on a frozen backbone, through Hugging Face PEFT."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from tl_lightning._checks import check_int, check_number
from tl_lightning._targets import GroupsSpec, HeadSpec, resolve_targets, shared_groups
from tl_lightning.errors import CheckpointError, ConfigurationError
from tl_lightning.finetune.lora._adapter import LoraAdapter, get_adapter, inject_lora
from tl_lightning.finetune.lora._checkpoint import restore_adapter, save_adapter
from tl_lightning.finetune.lora._targets import TargetModules, injection_root, resolve_target_modules

__all__ = ["LoRA", "add_lora", "trainable_parameters"]


def _check_lora_arguments(r: int, alpha: float, dropout: float, target_modules: TargetModules) -> None:
    check_int("LoRA r (rank)", r, low=1)
    check_number("LoRA alpha", alpha, low=0.0, low_open=True, hint="the update is scaled by alpha / r")
    check_number("LoRA dropout", dropout, low=0.0, high=1.0, high_open=True)
    if target_modules is not None:
        names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        if not names or not all(isinstance(t, str) and t for t in names):
            raise ConfigurationError(
                f"LoRA target_modules must be None (the backbone's declared targets), a non-empty list of layer names "
                f"or name suffixes, or one regex string; got {target_modules!r}"
            )


def add_lora(
    pl_module: nn.Module,
    r: int = 8,
    alpha: float = 8.0,
    dropout: float = 0.0,
    target_modules: TargetModules = None,
    *,
    groups: GroupsSpec = None,
    head: HeadSpec = "auto",
    seed: int | None = None,
) -> LoraAdapter:
    """Add a LoRA adapter to the backbone of ``pl_module`` (without a Trainer); the base is frozen, the head trains.

    Args: as :class:`LoRA`.

    Returns:
        What was added (root module, adapted layers, configuration, digest of the base).

    Example:
        >>> from tl_lightning import TransferClassifier
        >>> model = TransferClassifier("timm:test_vit", num_classes=3, pretrained=False)
        >>> add_lora(model, r=4).target_modules[:2]
        ('blocks.0.attn.qkv', 'blocks.0.attn.proj')
    """
    _check_lora_arguments(r, alpha, dropout, target_modules)
    existing = get_adapter(pl_module)
    if existing is not None:
        raise ConfigurationError(
            f"{type(pl_module).__name__} already has a LoRA adapter ({existing.config()}); add one adapter only"
        )
    targets = resolve_targets(pl_module, groups, head)
    root = injection_root(pl_module, targets)
    hparams = getattr(pl_module, "hparams", None)
    what = str(hparams.get("backbone") or type(pl_module).__name__) if hparams is not None else type(pl_module).__name__
    names = resolve_target_modules(pl_module, root, targets, target_modules, what)
    module = pl_module.get_submodule(root) if root else pl_module
    inside = {id(p) for p in module.parameters()}
    keep = [p for _, p in targets.head if id(p) in inside]
    adapter = inject_lora(
        pl_module, root, names, r=r, alpha=alpha, dropout=dropout, keep_trainable=keep, seed=seed
    )
    for _, p in targets.head:
        p.requires_grad_(True)
    return adapter


def trainable_parameters(pl_module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` scalar parameter counts of ``pl_module``."""
    params = list(pl_module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


class _LoadHook:
    """Runs :func:`restore_adapter` at the start of the module's ``on_load_checkpoint``.

    Lightning calls the module's ``on_load_checkpoint`` right before it loads the state dict and
    before any callback sees the checkpoint, so this is where an adapter checkpoint's missing
    base weights can be put back on any LightningModule. Wrapped as an instance attribute (which
    Lightning looks up) and given back on teardown.
    """

    def __init__(self) -> None:
        self._module: pl.LightningModule | None = None
        self._had_own = False
        self._previous: Callable[[dict[str, Any]], None] | None = None

    def attach(self, pl_module: pl.LightningModule) -> None:
        if self._module is pl_module:
            return
        self.detach()
        original = pl_module.on_load_checkpoint
        self._had_own = "on_load_checkpoint" in vars(pl_module)
        self._previous = original

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            restore_adapter(pl_module, checkpoint)
            original(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]
        self._module = pl_module

    def detach(self) -> None:
        if self._module is None:
            return
        if self._had_own:
            self._module.on_load_checkpoint = self._previous  # type: ignore[method-assign,assignment]
        else:
            vars(self._module).pop("on_load_checkpoint", None)
        self._module = None


class LoRA(Callback):
    """Train low-rank adapters on a frozen backbone, plus the full head: Hugging Face PEFT's LoRA.

    In ``setup`` the adapter is added with PEFT (``inject_adapter_in_model``, in place, so the
    backbone keeps its class and the tl_lightning contract) to the deepest module holding the
    LightningModule's layer groups (``backbone.model`` of a
    :class:`~tl_lightning.TransferClassifier`, ``self.model`` of your own module with
    ``groups="model"``). Targets default to what the model family declares: the attention
    projections of transformer blocks (timm ``attn.qkv`` / ``attn.proj``, Hugging Face ``query`` /
    ``key`` / ``value``); a model without a sensible default (a CNN) is an error listing its
    layers to pick from with ``target_modules=``. The base weights are frozen, the adapter and the
    head train, and the layer groups are rebuilt to hold the adapter weights, so the optimizer's
    named groups and :class:`~tl_lightning.callbacks.LayerwiseLRDecay` see them.

    Checkpoints hold the adapter, the head (everything that is not a frozen base weight: norm
    statistics included) and a sha256 digest of the base, not the base itself; resuming checks
    the rebuilt base against the digest (another base is a
    :class:`~tl_lightning.errors.CheckpointError` naming both) and loads strictly.
    ``TransferClassifier.load_from_checkpoint`` rebuilds the base from its pretrained source and
    adds the adapter. :func:`~tl_lightning.finetune.merge_lora` merges the adapter into the base
    for export. A backbone built with ``pretrained=False`` cannot be fetched again, so its base
    stays in the checkpoint.

    The adapter is added before DDP wraps the model, so the adapter weights are in DDP's reducer
    and the frozen base is not. :class:`~tl_lightning.callbacks.GradualUnfreezing` is refused: it
    would unfreeze the base weights LoRA keeps frozen. Norm layers of the base keep their mode:
    a CNN's BatchNorm statistics still update in train mode (they are kept in checkpoints).

    Logged every epoch: ``lora/trainable_params`` and ``lora/trainable_share`` (trainable over all
    parameters of the module).

    Args:
        r: Rank of the update ``B @ A``.
        alpha: The update is scaled by ``alpha / r``.
        dropout: Dropout on the adapter's input.
        target_modules: ``None`` for the family's declared targets, a list of layer names or name
            suffixes (``["qkv"]``, ``["layer4.0.conv2"]``), or one regex matched against whole
            names (PEFT's rules), relative to the adapted module. The head is never adapted.
        groups: Where the layer groups are (see :func:`~tl_lightning._targets.resolve_targets`).
        head: Layer-group names that belong to the head (``"auto"``: the model's declared head).
        log: Log the trainable parameter count and share.
        seed: Seed of the adapter's random initialisation; ``None``: the run's global seed
            (``seed_everything`` / ``tl-train seed=``), else 0. The adapter is initialised from its
            own generator, so every DDP / FSDP process builds the same one and the global random
            stream is left as it was.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[LoRA(r=8, alpha=16, dropout=0.1)])  # doctest: +SKIP
        >>> LoRA(r=4, target_modules=["layer4.0.conv2"], groups="model")  # doctest: +ELLIPSIS
        <...LoRA object at ...>
    """

    #: other tl_lightning callbacks of the Trainer see this callback's ``groups=``
    shares_layer_groups = True

    def __init__(
        self,
        r: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        target_modules: TargetModules = None,
        *,
        groups: GroupsSpec = None,
        head: HeadSpec = "auto",
        log: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(target_modules, Sequence) and not isinstance(target_modules, str):
            target_modules = [str(t) for t in target_modules]
        _check_lora_arguments(r, alpha, dropout, target_modules)
        self.r = int(r)
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.target_modules = target_modules
        self.groups = groups
        self.head = head
        self.log_stats = bool(log)
        self.seed = None if seed is None else check_int("seed", seed)
        self.adapter: LoraAdapter | None = None
        self._load_hook = _LoadHook()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(groups=str(self.groups))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"config": self.adapter.config() if self.adapter else None,
                "base_digest": self.adapter.base_digest if self.adapter else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("base_digest")
        if self.adapter is not None and saved is not None and saved != self.adapter.base_digest:
            raise CheckpointError(
                f"the checkpoint's LoRA base digest {str(saved)[:16]}... differs from this model's "
                f"{self.adapter.base_digest[:16]}...; resume on the base the adapter was trained on"
            )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from tl_lightning.callbacks.gradual_unfreezing import GradualUnfreezing

        unfreezers = [type(cb).__name__ for cb in trainer.callbacks if isinstance(cb, GradualUnfreezing)]
        if unfreezers:
            raise ConfigurationError(
                f"LoRA trains adapters on a frozen base, but {unfreezers[0]} flips requires_grad of whole layer groups "
                "and would unfreeze (or freeze) the base weights and the adapters with them. Fix: drop one of the two "
                "(tl-train: finetune=lora replaces finetune=gradual / top_n / feature_extraction)"
            )
        adapter = get_adapter(pl_module)
        if adapter is None:
            adapter = add_lora(
                pl_module, self.r, self.alpha, self.dropout, self.target_modules,
                groups=shared_groups(trainer, self, self.groups), head=self.head, seed=self.seed,
            )
            trainable, total = trainable_parameters(pl_module)
            rank_zero_info(
                f"[LoRA] r={self.r}, alpha={self.alpha:g}, dropout={self.dropout:g} on {len(adapter.target_modules)} "
                f"layers of {adapter.root or type(pl_module).__name__} ({', '.join(adapter.target_modules[:4])}"
                f"{' ...' if len(adapter.target_modules) > 4 else ''}); trainable parameters {trainable:,} of {total:,} "
                f"({trainable / max(total, 1):.2%}); base digest {adapter.base_digest[:16]}"
            )
        elif (adapter.r, adapter.alpha, adapter.dropout) != (self.r, self.alpha, self.dropout):
            raise ConfigurationError(
                f"{type(pl_module).__name__} already has a LoRA adapter with r={adapter.r}, alpha={adapter.alpha:g}, "
                f"dropout={adapter.dropout:g}; this LoRA callback asks for r={self.r}, alpha={self.alpha:g}, "
                f"dropout={self.dropout:g}. Fix: give the callback the adapter's settings"
            )
        self.adapter = adapter
        self._load_hook.attach(pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.log_stats:
            trainable, total = trainable_parameters(pl_module)
            pl_module.log("lora/trainable_params", float(trainable), on_step=False, on_epoch=True)
            pl_module.log("lora/trainable_share", trainable / max(total, 1), on_step=False, on_epoch=True)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        save_adapter(pl_module, checkpoint)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._load_hook.detach()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._load_hook.detach()
