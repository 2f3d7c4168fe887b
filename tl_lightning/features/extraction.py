"""Computing a split's frozen-backbone features once: eval mode, batched, on the run's device and precision.

:class:`FeatureExtractor` is what cached-feature training and LP-FT call. For one split of a
data module it builds the :class:`~tl_lightning.features.key.FeatureKey`, reads the features
from the :class:`~tl_lightning.features.cache.FeatureCache` when they are there, and otherwise
computes them and stores them:

* inputs come from the data module's :meth:`feature_loader` (sequential, the training split
  without random augmentation);
* the backbone runs in eval mode (BatchNorm running statistics, no dropout) under
  ``torch.inference_mode`` and the Trainer's precision context, on the Trainer's device; each
  module's train / eval mode is restored afterwards;
* under DDP (or any multi-process strategy) each rank computes every ``world_size``-th sample
  (padded to equal shards, as ``DistributedSampler`` pads) and the shards are gathered, so every
  rank ends with the same full matrix, in sample order: the result equals a 1-process run. Rank 0
  decides whether the cache has the features and writes them; the others wait for it.

The weight digest is computed once per extractor (one run), not per split.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn

from tl_lightning.errors import ConfigurationError, DataError
from tl_lightning.features.cache import DEFAULT_MEMMAP_BYTES, CachedSplit, FeatureCache
from tl_lightning.features.key import (
    FeatureKey,
    dataset_digest,
    dataset_targets,
    inputs_fingerprint,
    labels_digest,
    pooling_of,
    weights_digest,
)
from tl_lightning.freezing import eval_mode

__all__ = ["FeatureExtractor", "extract_features", "shard_indices"]

log = logging.getLogger("tl_lightning.features")


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s samples of ``0 .. n-1``: every ``world_size``-th, padded to ``ceil(n / world_size)``.

    Example:
        >>> shard_indices(5, 0, 2), shard_indices(5, 1, 2)
        ([0, 2, 4], [1, 3, 0])
    """
    if n == 0:
        return []
    per_rank = math.ceil(n / world_size)
    padding = per_rank * world_size - n
    padded = list(range(n)) + (list(range(n)) * math.ceil(padding / n))[:padding]
    return padded[rank::world_size]



def _features_fn(model: nn.Module) -> tuple[Callable[[Any], Tensor], nn.Module]:
    """``(inputs -> pooled features, the backbone module)`` of a TransferClassifier-like module."""
    backbone = getattr(model, "backbone", None)
    features = getattr(model, "features", None)
    if callable(features) and isinstance(backbone, nn.Module):
        return features, backbone
    if isinstance(backbone, nn.Module):
        return backbone, backbone
    raise ConfigurationError(
        f"cached features need a module with a `backbone` (tl_lightning Backbone) and ideally a `features(x)` "
        f"method, as TransferClassifier has; got {type(model).__name__}"
    )


def extract_features(
    model: nn.Module,
    loader: Any,
    *,
    device: torch.device | str | None = None,
    forward_context: Callable[[], contextlib.AbstractContextManager] | None = None,
    convert_input: Callable[[Any], Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the frozen backbone over ``loader`` once, in eval mode, and return ``(features, targets)``.

    Args:
        model: A :class:`~tl_lightning.TransferClassifier` (its ``features``) or a module with a ``backbone``.
        loader: Batches of ``(inputs, targets)``.
        device: Where the inputs go (default: where the backbone's parameters are).
        forward_context: A context manager factory around every forward (a Trainer's precision
            plugin ``forward_context``: autocast for mixed precision).
        convert_input: Applied to every input batch on the device (a precision plugin's
            ``convert_input`` for true half precision).

    Returns:
        ``(n, feature_dim)`` float32 features and the targets (``(n,)`` int64 or ``(n, C)`` float32).
    """
    fn, backbone = _features_fn(model)
    if device is None:
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    context = forward_context or contextlib.nullcontext
    features: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    with eval_mode(backbone), torch.inference_mode():
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise DataError(f"feature extraction needs (inputs, targets) batches, got {type(batch).__name__}")
            x, y = batch
            x = move_data_to_device(x, device)
            if convert_input is not None:
                x = convert_input(x)
            with context():
                f = fn(x)
            features.append(f.float().cpu().numpy())
            targets.append(y.cpu().numpy() if isinstance(y, Tensor) else np.asarray(y))
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(features).astype(np.float32, copy=False), np.concatenate(targets)


class FeatureExtractor:
    """Features of a model's frozen backbone for the splits of a data module, through a cache.

    Args:
        model: The :class:`~tl_lightning.TransferClassifier` whose backbone computes them.
        cache_dir: The cache folder; ``None``: the data module's ``cache_dir``, else
            ``<trainer.default_root_dir>/feature_cache`` (the run folder under ``tl-train``), else
            memory only.
        memmap_bytes: Feature sets larger than this are memory-mapped from the cache.
        batch_size: Extraction batch size (default: the data module's).
        trainer: The Trainer of the run: its device, precision, ranks and collectives.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        cache_dir: str | Path | None = None,
        memmap_bytes: int = DEFAULT_MEMMAP_BYTES,
        batch_size: int | None = None,
        trainer: Any = None,
    ) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self.memmap_bytes = memmap_bytes
        self.batch_size = batch_size
        self.trainer = trainer
        self._weights: str | None = None

    # -- key --------------------------------------------------------------------------------
    def _precision(self) -> str:
        return str(self.trainer.precision) if self.trainer is not None else "32-true"

    def weights(self) -> str:
        """The backbone's weight digest (computed on the first call, then kept)."""
        if self._weights is None:
            _, backbone = _features_fn(self.model)
            t0 = time.perf_counter()
            self._weights = weights_digest(backbone)
            log.info("feature cache: backbone weight digest in %.2f s", time.perf_counter() - t0)
        return self._weights

    def key(self, datamodule: Any, split: str) -> FeatureKey:
        """The :class:`FeatureKey` of ``split``'s features."""
        _, backbone = _features_fn(self.model)
        dataset = datamodule.feature_dataset(split)
        hparams = getattr(self.model, "hparams", None)
        name = hparams.get("backbone") if isinstance(hparams, Mapping) else None
        return FeatureKey(
            backbone=str(name or getattr(backbone, "name", "") or type(backbone).__name__),
            weights=self.weights(),
            pooling=pooling_of(backbone),
            inputs=inputs_fingerprint(datamodule.effective_preprocess(), getattr(dataset, "transform", None)),
            data=dataset_digest(dataset),
            labels=labels_digest(datamodule.labels, dataset_targets(dataset)),
            precision=self._precision(),
        )

    def cache_for(self, datamodule: Any) -> FeatureCache | None:
        """The cache this extractor reads and writes for ``datamodule`` (``None``: memory only)."""
        folder = self.cache_dir or getattr(datamodule, "cache_dir", None)
        if folder is None and self.trainer is not None:
            folder = Path(self.trainer.default_root_dir) / "feature_cache"
        return None if folder is None else FeatureCache(folder, self.memmap_bytes)

    # -- ranks ------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 1, 0
        return int(self.trainer.world_size), int(self.trainer.global_rank)

    def _device(self) -> torch.device | None:
        return self.trainer.strategy.root_device if self.trainer is not None else None

    def _broadcast(self, obj: Any) -> Any:
        world, _ = self._world()
        return self.trainer.strategy.broadcast(obj, src=0) if world > 1 else obj

    def _barrier(self) -> None:
        if self._world()[0] > 1:
            self.trainer.strategy.barrier("tl_lightning_feature_cache")

    def _gather(self, n: int, local: np.ndarray) -> np.ndarray:
        """Every rank's shard, put back into sample order: ``(n, ...)`` on every rank."""
        world, _ = self._world()
        tensor = torch.from_numpy(np.ascontiguousarray(local)).to(self.trainer.strategy.root_device)
        gathered = self.trainer.strategy.all_gather(tensor).cpu().numpy()  # (world, per_rank, ...)
        full = np.empty((n, *local.shape[1:]), dtype=local.dtype)
        for r in range(world):
            full[shard_indices(n, r, world)] = gathered[r]
        return full

    # -- the split --------------------------------------------------------------------------
    def train_and_val(self, datamodule: Any) -> tuple[CachedSplit, CachedSplit | None]:
        """The training split's features, and the validation split's when the data module has one (else ``None``)."""
        train = self.split(datamodule, "train")
        try:
            has_val = len(datamodule.feature_dataset("val")) > 0
        except DataError:  # no val split (val_fraction=0)
            has_val = False
        return train, self.split(datamodule, "val") if has_val else None

    def split(self, datamodule: Any, split: str) -> CachedSplit:
        """``split``'s features: read from the cache, or computed (sharded across ranks) and stored.

        Raises:
            DataError: The split is empty, or the extraction returned another number of samples.
        """
        t0 = time.perf_counter()
        key = self.key(datamodule, split)
        cache = self.cache_for(datamodule)
        world, rank = self._world()
        found = cache.load(key) if cache is not None and rank == 0 else None
        if self._broadcast(found is not None):
            if found is None:  # rank > 0: rank 0 saw the folder, so it is complete
                assert cache is not None
                found = cache.load(key)
            if found is not None:
                found.seconds = time.perf_counter() - t0
                log.info("feature cache: %s features reused from %s", split, found.path)
                return found
        n = len(datamodule.feature_dataset(split))
        if n == 0:
            raise DataError(f"the {split} split is empty: no features to compute")
        indices = shard_indices(n, rank, world)
        loader = datamodule.feature_loader(split, indices, self.batch_size)
        plugin = self.trainer.precision_plugin if self.trainer is not None else None
        features, targets = extract_features(
            self.model,
            loader,
            device=self._device(),
            forward_context=plugin.forward_context if plugin is not None else None,
            convert_input=plugin.convert_input if plugin is not None else None,
        )
        if len(features) != len(indices):
            raise DataError(
                f"feature extraction of the {split} split returned {len(features)} samples for {len(indices)} inputs "
                "(unreadable images skipped while loading?). Fix: on_bad_image=error to find them, or remove them"
            )
        if world > 1:
            features, targets = self._gather(n, features), self._gather(n, targets)
        result = CachedSplit(features=features, targets=targets, key=key)
        if cache is not None:
            if rank == 0:
                result = cache.save(key, features, targets, split=split)
            self._barrier()
            if rank != 0 and features.nbytes > self.memmap_bytes:
                result = cache.load(key) or result  # memory-map rank 0's file when it is visible here
                result.reused = False
        result.seconds = time.perf_counter() - t0
        log.info("feature cache: %s features computed (%d x %d) in %.1f s", split, n, features.shape[1], result.seconds)
        return result
