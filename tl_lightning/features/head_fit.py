"""LinearHeadFit: fit the linear head to convergence on cached frozen features before training starts.

With features computed once, fitting the head is a convex problem solved in seconds: an L2
logistic regression by full-batch L-BFGS (:func:`~tl_lightning.features.fit_logistic_regression`;
softmax for multiclass, a sigmoid per label for multilabel), the L2 strength chosen on the
validation split (or, without one, on a held-out part of the training split, then refitted on
all of it). The solution, standardisation folded in, is written into the head's ``fc`` layer.

* ``finetune=feature_extraction``: the head starts converged, so the epochs on cached features
  that follow (milliseconds each) only polish it, and the best-validation checkpoint keeps the
  better of the two;
* ``finetune=lp_ft`` (:class:`~tl_lightning.finetune.LPFT`): phase 1 of LP-FT, before
  everything is fine-tuned from this head at a small LR.

The features come from the run's data module through the feature cache (a
:class:`~tl_lightning.features.CachedFeatureDataModule` shares what it computed), in eval mode,
on the run's device and precision. Under DDP every rank computes its shard, the shards are
gathered, and rank 0's solution is broadcast, so the replicas start identical. The fit is done
once: its outcome is in the callback's checkpoint state, so a resumed run does not refit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from tl_lightning._checks import check_choice, check_int
from tl_lightning.errors import ConfigurationError
from tl_lightning.features.cache import DEFAULT_MEMMAP_BYTES, CachedSplit
from tl_lightning.features.datamodule import CachedFeatureDataModule
from tl_lightning.features.extraction import FeatureExtractor
from tl_lightning.features.linear import DEFAULT_L2_GRID, LogisticFit, check_l2_grid, fit_logistic_regression

__all__ = ["LinearHeadFit", "linear_layer_of"]


def linear_layer_of(model: nn.Module) -> nn.Linear:
    """The head's output layer (``model.head.fc`` of a linear head), which a fitted solution is written to.

    Raises:
        ConfigurationError: The head is not a single linear layer (an MLP head has no closed-form fit).
    """
    head = getattr(model, "head", None)
    fc = getattr(head, "fc", None) if head is not None else None
    if isinstance(head, nn.Linear):
        fc = head
    hidden = [m for m in (head.modules() if head is not None else []) if isinstance(m, nn.Linear) and m is not fc]
    if not isinstance(fc, nn.Linear) or hidden:
        raise ConfigurationError(
            f"fitting the head on cached features needs a linear head (one nn.Linear, `head.fc`), but "
            f"{type(model).__name__}.head is {type(head).__name__}. Fix: model.head=linear, or drop the head fit "
            "(callbacks.head_fit=null / callbacks.lp_ft=null)"
        )
    return fc


class LinearHeadFit(Callback):
    """Fit the model's linear head by L-BFGS logistic regression on cached features, at the start of fit.

    Args:
        l2_grid: L2 strengths tried (on standardised features); the best by validation accuracy wins.
        max_iter: Most L-BFGS iterations per strength.
        val_fraction: Without a validation split, the share of the training split held out to
            choose the strength (then the chosen strength is refitted on all of it).
        cache_dir: Feature cache folder (see :class:`~tl_lightning.features.FeatureExtractor`).
        memmap_bytes: Feature sets larger than this are memory-mapped.
        batch_size: Batch size of the feature computation (default: the data module's).
        seed: Seed of the held-out part.
        scale: How features are scaled before the fit (see
            :func:`~tl_lightning.features.fit_logistic_regression`): ``"global"`` (one scale for
            every dim, the default: the L2 penalty is isotropic in the backbone's feature space,
            like weight decay on a head trained by SGD) or ``"per_dim"`` (each dim to unit variance).
        state_key: Distinguishes two instances in one Trainer.

    Attributes:
        fit: The :class:`~tl_lightning.features.LogisticFit` of this run (``None`` before the fit,
            and after a resume, whose checkpoint holds the head already).
        seconds: ``{"features": ..., "fit": ...}`` seconds spent.

    Example:
        >>> trainer = pl.Trainer(callbacks=[GradualUnfreezing.feature_extraction(), LinearHeadFit()])  # doctest: +SKIP
    """

    name = "LinearHeadFit"

    def __init__(
        self,
        l2_grid: Sequence[float] = DEFAULT_L2_GRID,
        max_iter: int = 200,
        val_fraction: float = 0.2,
        cache_dir: str | Path | None = None,
        memmap_bytes: int = DEFAULT_MEMMAP_BYTES,
        batch_size: int | None = None,
        seed: int = 0,
        scale: Literal["per_dim", "global"] = "global",
        state_key: str | None = None,
    ) -> None:
        super().__init__()
        self.l2_grid = check_l2_grid(list(l2_grid) if not isinstance(l2_grid, (str, bytes)) else l2_grid)
        self.max_iter = check_int("max_iter", max_iter, low=1)
        self.val_fraction = val_fraction
        self.cache_dir = cache_dir
        self.memmap_bytes = memmap_bytes
        self.batch_size = batch_size
        self.seed = check_int("seed", seed, low=0)
        self.scale = check_choice("scale", scale, ("per_dim", "global"))
        self._state_key = state_key
        self.fit: LogisticFit | None = None
        self.fitted = False
        self.seconds: dict[str, float] = {}
        self._summary: dict[str, Any] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._state_key or self._generate_state_key(l2_grid=tuple(self.l2_grid), max_iter=self.max_iter)

    # -- features -------------------------------------------------------------------------
    def _splits(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[CachedSplit, CachedSplit | None]:
        dm = trainer.datamodule
        if isinstance(dm, CachedFeatureDataModule):
            train = dm.cached_split("train")
            return train, dm.cached_split("val") if dm._has_split("val") else None
        if dm is None or not callable(getattr(dm, "feature_loader", None)):
            raise ConfigurationError(
                f"{self.name} computes features from the run's data module: pass one with `feature_loader` "
                "(ImageFolderDataModule, TextClassificationDataModule) as trainer.fit(model, datamodule=...)"
            )
        extractor = FeatureExtractor(
            pl_module, cache_dir=self.cache_dir, memmap_bytes=self.memmap_bytes, batch_size=self.batch_size,
            trainer=trainer,
        )
        # no val split (val_fraction=0): part of the training split is held out
        return extractor.train_and_val(dm)

    # -- the fit ----------------------------------------------------------------------------
    def fit_head(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> LogisticFit:
        """Compute (or read) the features, fit, and write the solution into the head (every rank)."""
        fc = linear_layer_of(pl_module)
        t0 = time.perf_counter()
        train, val = self._splits(trainer, pl_module)
        t1 = time.perf_counter()
        task = getattr(pl_module, "task", "multiclass")
        num_classes = int(getattr(pl_module, "num_classes", fc.out_features))
        fit = fit_logistic_regression(
            train.features,
            train.targets,
            num_classes=num_classes,
            task=task,
            val_features=None if val is None else val.features,
            val_targets=None if val is None else val.targets,
            val_fraction=self.val_fraction,
            refit=True,
            l2_grid=self.l2_grid,
            max_iter=self.max_iter,
            seed=self.seed,
            scale=self.scale,
        )
        weight = torch.from_numpy(fit.weight)
        bias = torch.from_numpy(fit.bias)
        if trainer.world_size > 1:
            # the ranks fitted the same matrices; rank 0's solution makes the replicas bit-identical
            weight, bias = trainer.strategy.broadcast((weight, bias), src=0)
        with torch.no_grad():
            fc.weight.copy_(weight.to(fc.weight))
            fc.bias.copy_(bias.to(fc.bias))
        self.seconds = {"features": t1 - t0, "fit": time.perf_counter() - t1}
        self.fit = fit
        self.fitted = True
        self._summary = {
            "l2": fit.l2,
            "val_accuracy": fit.accuracy,
            "held_out": fit.held_out,
            "n_fit": fit.n_fit,
            "features_reused": bool(train.reused),
        }
        where = "a held-out part of the training split" if fit.held_out else "the validation split"
        rank_zero_info(
            f"[{self.name}] head fitted by L-BFGS logistic regression on {fit.n_fit} training features "
            f"({train.features.shape[1]} dims, {'read from the cache' if train.reused else 'computed once'} in "
            f"{self.seconds['features']:.1f} s) in {self.seconds['fit']:.1f} s: l2={fit.l2:g} chosen on {where} "
            f"(accuracy {fit.accuracy:.3f})"
        )
        return fit

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.fitted:  # a resumed run restored the fitted head with its checkpoint
            self.fit_head(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"fitted": self.fitted, **self._summary}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fitted = bool(state_dict.get("fitted", False))
        self._summary = {k: v for k, v in state_dict.items() if k != "fitted"}
