"""Backbone adapters: pretrained trunks behind one contract (see :class:`Backbone`)."""

from tl_lightning.backbones._auto import layer_groups_for_module, layer_groups_from_patterns
from tl_lightning.backbones._base import (
    Backbone,
    ImagePreprocess,
    LayerGroup,
    PreprocessConfig,
    TextPreprocess,
    check_layer_groups,
    layer_groups_from_prefixes,
)
from tl_lightning.backbones._registry import (
    create_backbone,
    list_backbones,
    list_families,
    register_backbone,
    register_family,
)
from tl_lightning.backbones._weights import KeyMap, load_weights, read_state_dict, rename_keys

__all__ = [
    "Backbone",
    "ImagePreprocess",
    "KeyMap",
    "LayerGroup",
    "PreprocessConfig",
    "TextPreprocess",
    "check_layer_groups",
    "create_backbone",
    "layer_groups_for_module",
    "layer_groups_from_patterns",
    "layer_groups_from_prefixes",
    "list_backbones",
    "list_families",
    "load_weights",
    "read_state_dict",
    "register_backbone",
    "register_family",
    "rename_keys",
]
