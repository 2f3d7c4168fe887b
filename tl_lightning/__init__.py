"""tl_lightning: PyTorch Lightning building blocks for transfer learning."""

from tl_lightning.backbones import Backbone, LayerGroup, create_backbone, list_backbones
from tl_lightning.callbacks import GradualUnfreezing, LayerwiseLRDecay
from tl_lightning.data import ImageFolderDataModule, TextClassificationDataModule
from tl_lightning.describe import describe_layer_groups
from tl_lightning.errors import TLError
from tl_lightning.freezing import no_grad_if_frozen
from tl_lightning.heads import LinearHead, MLPHead, create_head
from tl_lightning.modules import TransferClassifier

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "GradualUnfreezing",
    "ImageFolderDataModule",
    "LayerGroup",
    "LayerwiseLRDecay",
    "LinearHead",
    "MLPHead",
    "TLError",
    "TextClassificationDataModule",
    "TransferClassifier",
    "create_backbone",
    "create_head",
    "describe_layer_groups",
    "list_backbones",
    "no_grad_if_frozen",
    "__version__",
]
