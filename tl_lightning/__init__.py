"""tl_lightning: PyTorch Lightning building blocks for transfer learning."""

from tl_lightning.backbones import Backbone, LayerGroup, create_backbone, list_backbones
from tl_lightning.errors import TLError

__version__ = "0.1.0"

__all__ = ["Backbone", "LayerGroup", "TLError", "create_backbone", "list_backbones", "__version__"]
