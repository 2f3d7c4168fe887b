"""Optimizer helpers: layer-wise param groups and transfer-learning LR schedules."""

from tl_lightning.optim._param_groups import (
    HEAD_GROUP,
    NO_DECAY_SUFFIX,
    is_no_decay_param,
    layerwise_lrs,
    layerwise_param_groups,
)
from tl_lightning.optim._repartition import apply_layerwise_lr_decay
from tl_lightning.optim.schedulers import build_scheduler, constant, slanted_triangular, warmup_cosine

__all__ = [
    "HEAD_GROUP",
    "NO_DECAY_SUFFIX",
    "apply_layerwise_lr_decay",
    "build_scheduler",
    "constant",
    "is_no_decay_param",
    "layerwise_lrs",
    "layerwise_param_groups",
    "slanted_triangular",
    "warmup_cosine",
]
