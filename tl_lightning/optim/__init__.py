"""Optimizer helpers: layer-wise param groups and transfer-learning LR schedules."""

from tl_lightning.optim._param_groups import (
    HEAD_GROUP,
    NO_DECAY_SUFFIX,
    is_no_decay_param,
    layerwise_lrs,
    layerwise_param_groups,
)

__all__ = ["HEAD_GROUP", "NO_DECAY_SUFFIX", "is_no_decay_param", "layerwise_lrs", "layerwise_param_groups"]
