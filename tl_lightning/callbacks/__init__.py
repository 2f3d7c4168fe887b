"""Fine-tuning callbacks that work on any LightningModule, under DDP, resume and any scheduler.

Example:
    >>> from tl_lightning.callbacks import GradualUnfreezing, LayerwiseLRDecay
    >>> callbacks = [LayerwiseLRDecay(decay=0.8, groups="model"),
    ...              GradualUnfreezing(groups="model", unfreeze_every=1, warmup_steps=50)]
"""

from tl_lightning.callbacks.checkpoint import LastAndBestCheckpoint
from tl_lightning.callbacks.exact_resume import ExactResume
from tl_lightning.callbacks.gradual_unfreezing import GradualUnfreezing
from tl_lightning.callbacks.layer_decay import LayerwiseLRDecay
from tl_lightning.callbacks.optuna_pruning import OptunaPruning
from tl_lightning.optim._repartition import apply_layerwise_lr_decay
from tl_lightning.finetune import L2SP, LoRA  # after the callbacks above: tl_lightning.finetune uses their modules

__all__ = [
    "ExactResume", "GradualUnfreezing", "L2SP", "LastAndBestCheckpoint", "LayerwiseLRDecay", "LoRA",
    "OptunaPruning", "apply_layerwise_lr_decay",
]
