"""LP-FT (Kumar, Raghunathan, Jones, Ma & Liang, ICLR 2022): linear probe first, then fine-tune everything.

Fine-tuning a pretrained backbone under a randomly initialised head distorts its features: while
the head is still wrong, the large early gradients flowing into the backbone change the features
of the training distribution, and features of inputs unlike the training data fall behind. The
paper probes first (fits the head on frozen features) and then fine-tunes everything from that
head; on their benchmarks LP-FT beat plain fine-tuning by about 10 points out of distribution and
about 1 point in distribution.

* **Phase 1** (at the start of fit, seconds): the head is fitted to convergence on the backbone's
  frozen features, an L2 logistic regression by L-BFGS with the L2 strength chosen on the
  validation split (:class:`~tl_lightning.features.LinearHeadFit`). The features are computed
  once, in eval mode, through the feature cache (shared with ``finetune=feature_extraction``
  runs on the same backbone and data).
* **Phase 2**: the ordinary training loop fine-tunes everything from that head, at the model's
  learning rate, which the ``lp_ft`` config sets small (``model.lr=1e-4``, a tenth of the full
  fine-tuning default): the head is already good, and a large LR would undo the point.
  BatchNorm layers keep the running statistics phase 1's features were computed with (eval mode;
  their scale and shift still train): in train mode they would normalise with the statistics of
  each batch of the new data, which on a domain far from the pretraining data (digits for an
  ImageNet network) changes every feature the fitted head reads at the first step and throws the
  probe away. ``freeze_bn_stats=False`` lets them adapt as in plain fine-tuning.

Phase 1 runs once: its state is in the checkpoint, so a resumed run goes on with phase 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from tl_lightning.errors import ConfigurationError
from tl_lightning.features.datamodule import CachedFeatureDataModule
from tl_lightning.features.head_fit import LinearHeadFit
from tl_lightning.freezing import is_frozen, norm_modules_with_stats, set_norm_eval

__all__ = ["LPFT"]


class LPFT(LinearHeadFit):
    """LP-FT: fit the linear head on cached frozen features (phase 1), then fine-tune everything (phase 2).

    Takes the arguments of :class:`~tl_lightning.features.LinearHeadFit` (``l2_grid``,
    ``max_iter``, ``cache_dir``, ...). Phase 2 is the Trainer's training loop: give the model a
    small learning rate and let every layer train (no freezing callback), as ``finetune=lp_ft`` does.

    Args:
        freeze_bn_stats: In phase 2, keep the backbone's BatchNorm (and other running-statistics
            norm) layers in eval mode, on the statistics phase 1's features were computed with;
            their affine parameters still train. ``False``: they switch to batch statistics as in
            plain fine-tuning.
        **kwargs: :class:`~tl_lightning.features.LinearHeadFit`'s arguments.

    Raises:
        ConfigurationError: The data module yields cached features (phase 2 trains the backbone
            on raw inputs), or the head is not linear.

    Example:
        >>> model = TransferClassifier("timm:resnet50", labels=dm.labels, lr=1e-4)  # doctest: +SKIP
        >>> pl.Trainer(max_epochs=10, callbacks=[LPFT()]).fit(model, dm)  # doctest: +SKIP
    """

    name = "LPFT"

    def __init__(self, *args: Any, freeze_bn_stats: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.freeze_bn_stats = bool(freeze_bn_stats)
        self._norms: Sequence[Any] = ()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(trainer.datamodule, CachedFeatureDataModule):
            raise ConfigurationError(
                "LP-FT's phase 2 fine-tunes the backbone on raw inputs, but the data module yields cached "
                "features. Fix: finetune.cached_features=false (finetune=lp_ft sets it), or finetune=feature_extraction "
                "for the linear probe alone"
            )
        backbone = getattr(pl_module, "backbone", None)
        if backbone is not None and is_frozen(backbone):
            rank_zero_warn(
                "[LPFT] the backbone is frozen when training starts: phase 2 fine-tunes it only if an unfreezing "
                "schedule trains it later; otherwise this run is a linear probe (finetune=feature_extraction does "
                "that on cached features)"
            )
        resumed = self.fitted
        super().on_fit_start(trainer, pl_module)
        if self.freeze_bn_stats:
            self._norms = norm_modules_with_stats(backbone if backbone is not None else pl_module)
        lrs = sorted({float(g.get("initial_lr", g["lr"])) for opt in trainer.optimizers for g in opt.param_groups})
        rank_zero_info(
            f"[LPFT] phase 2{' (resumed)' if resumed else ''}: fine-tuning everything from the fitted head at "
            f"lr {', '.join(f'{lr:g}' for lr in lrs)}"
            + (f"; {len(self._norms)} BatchNorm layer(s) keep their pretrained running statistics" if self._norms else "")
        )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        set_norm_eval(self._norms)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        set_norm_eval(self._norms)  # a module's own train() may have reset them

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "phase": 2 if self.fitted else 1}
