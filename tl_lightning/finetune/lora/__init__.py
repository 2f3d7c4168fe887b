"""LoRA through Hugging Face PEFT: adapters on a frozen backbone, adapter-only checkpoints, merge for export.

Example:
    >>> from tl_lightning.finetune.lora import LoRA, merge_lora
    >>> callback = LoRA(r=8, alpha=16, dropout=0.1)   # default targets: attention projections
"""

from tl_lightning.finetune.lora._adapter import LoraAdapter, base_digest, get_adapter, merge_lora
from tl_lightning.finetune.lora._checkpoint import ADAPTER_KEY, adapter_base_kwargs, restore_adapter, save_adapter
from tl_lightning.finetune.lora.callback import LoRA, add_lora, trainable_parameters

__all__ = [
    "ADAPTER_KEY",
    "LoRA",
    "LoraAdapter",
    "adapter_base_kwargs",
    "add_lora",
    "base_digest",
    "get_adapter",
    "merge_lora",
    "restore_adapter",
    "save_adapter",
    "trainable_parameters",
]
