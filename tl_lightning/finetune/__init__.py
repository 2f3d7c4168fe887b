"""Fine-tuning strategies beyond freezing and learning rates, one module or folder per method.

* :class:`L2SP` (``finetune=l2sp``): pull the backbone towards its pretrained weights.
* :class:`LoRA` (``finetune=lora``): low-rank adapters on a frozen backbone, through Hugging Face
  PEFT; :func:`merge_lora` merges them for export.
* :class:`LPFT` (``finetune=lp_ft``): fit the head on cached frozen features, then fine-tune everything.
* From scratch (``finetune=scratch``) is a config only: the same architecture, random init.

Each is a Lightning callback that works on :class:`~tl_lightning.TransferClassifier` and on your
own LightningModule (layer groups found through the backbone contract), composes with the other
tl_lightning callbacks and keeps DDP replicas identical and resumes exactly.

Example:
    >>> from tl_lightning.finetune import L2SP, LoRA
    >>> callbacks = [L2SP(alpha=0.1, beta=0.01)]
"""

from tl_lightning.finetune.l2sp import L2SP
from tl_lightning.finetune.lora import LoRA, add_lora, merge_lora
from tl_lightning.finetune.lp_ft import LPFT

__all__ = ["L2SP", "LPFT", "LoRA", "add_lora", "merge_lora"]
