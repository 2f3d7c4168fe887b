"""LightningModules that put a task head on a pretrained backbone."""

from tl_lightning.modules.classifier import TransferClassifier

__all__ = ["TransferClassifier"]
