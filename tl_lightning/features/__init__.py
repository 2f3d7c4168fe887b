"""Frozen features are computed once: cached features for frozen backbones.

While the whole backbone is frozen (feature extraction, a linear probe, the first phase of
LP-FT), its output depends only on the input. Its features are computed once per split, in eval
mode, batched, on the run's device and precision, stored under a key that covers everything that
changes them (:class:`FeatureKey`: backbone and weight digest, pooling, eval transform or
tokenizer, data, labels, precision), and the head trains on them.

* :class:`CachedFeatureDataModule` wraps a data module: batches of cached features, on which
  :class:`~tl_lightning.TransferClassifier` runs only its head (``finetune=feature_extraction``
  in ``tl-train`` uses it by default);
* :class:`LinearHeadFit` fits the linear head to convergence on them before training (an L2
  logistic regression by L-BFGS, :func:`fit_logistic_regression`, the L2 strength chosen on
  validation); LP-FT's first phase (:class:`~tl_lightning.finetune.LPFT`);
* :class:`FeatureExtractor` / :class:`FeatureCache` / :func:`extract_features`: the machinery,
  for your own loops (ranking backbones, probing).

Example:
    >>> from tl_lightning.features import CachedFeatureDataModule, LinearHeadFit
    >>> callbacks = [LinearHeadFit(l2_grid=[1e-3, 1e-2, 1e-1])]
"""

from tl_lightning.features.cache import DEFAULT_MEMMAP_BYTES, CachedSplit, FeatureCache
from tl_lightning.features.datamodule import CachedFeatureDataModule, cached_features_datamodule, check_no_augmentation
from tl_lightning.features.extraction import FeatureExtractor, extract_features, shard_indices
from tl_lightning.features.head_fit import LinearHeadFit, linear_layer_of
from tl_lightning.features.key import FeatureKey, weights_digest
from tl_lightning.features.linear import DEFAULT_L2_GRID, LogisticFit, fit_logistic_regression

__all__ = [
    "DEFAULT_L2_GRID",
    "DEFAULT_MEMMAP_BYTES",
    "CachedFeatureDataModule",
    "CachedSplit",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureKey",
    "LinearHeadFit",
    "LogisticFit",
    "cached_features_datamodule",
    "check_no_augmentation",
    "extract_features",
    "fit_logistic_regression",
    "linear_layer_of",
    "shard_indices",
    "weights_digest",
]
