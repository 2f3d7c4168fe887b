"""Backbone adapters: pretrained trunks behind one contract (see :class:`Backbone`), and the one
grouping engine that splits any model into layer groups (see :class:`LayerSpec`)."""

from tl_lightning.backbones._auto import layer_groups_for_module, layer_groups_from_patterns, layer_spec_of
from tl_lightning.backbones._base import (
    Backbone,
    ImagePreprocess,
    LayerGroup,
    PreprocessConfig,
    TextPreprocess,
    check_layer_groups,
)
from tl_lightning.backbones._grouping import (
    LayerSpec,
    build_layer_groups,
    spec_by_children,
    spec_from_patterns,
    spec_from_prefixes,
)
from tl_lightning.backbones._registry import (
    create_backbone,
    layer_spec_for,
    list_backbones,
    list_families,
    register_backbone,
    register_family,
    register_layer_spec,
)
from tl_lightning.backbones._weights import KeyMap, load_weights, read_state_dict, rename_keys

__all__ = [
    "Backbone",
    "ImagePreprocess",
    "KeyMap",
    "LayerGroup",
    "LayerSpec",
    "PreprocessConfig",
    "TextPreprocess",
    "build_layer_groups",
    "check_layer_groups",
    "create_backbone",
    "layer_groups_for_module",
    "layer_groups_from_patterns",
    "layer_spec_for",
    "layer_spec_of",
    "list_backbones",
    "list_families",
    "load_weights",
    "read_state_dict",
    "register_backbone",
    "register_family",
    "register_layer_spec",
    "rename_keys",
    "spec_by_children",
    "spec_from_patterns",
    "spec_from_prefixes",
]
