"""torchvision backbones: ``tv:<arch>`` for any torchvision classification model.

The model comes from ``torchvision.models.get_model(arch, weights=...)``; its last classifier
layer is replaced by ``nn.Identity`` so the forward pass returns pooled features (anything the
classifier holds before that layer, such as ConvNeXt's final LayerNorm or MobileNetV3's
pre-logits Linear, stays and is trained with the trunk). Known families are grouped by stage:

=====================================  ==========================================================
family                                 layer groups, input -> output
=====================================  ==========================================================
resnet, resnext, wide_resnet           ``stem`` (conv1, bn1), ``layer1`` .. ``layer4``
efficientnet(_v2), mobilenet_v2 / v3    ``stem`` (features.0), ``features.1`` .. ``features.N``
                                       (the last is the 1x1 head conv), then ``classifier``
                                       (v3 pre-logits) when it has parameters
convnext                               ``stem``, ``stage1`` .. ``stage4`` (each with the
                                       downsampling layer before it), ``norm``
vit                                    ``stem`` (conv_proj, class_token, pos_embedding),
                                       ``encoder_layer_N``, ``norm`` (encoder.ln)
others                                 one group per top-level child; a container holding more
                                       than half of the parameters (``features``,
                                       ``trunk_output``) is split into its children
=====================================  ==========================================================

Preprocessing comes from the weights enum's ``transforms()`` (crop size, resize size ->
``crop_pct``, mean, std, interpolation).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import get_model, get_model_weights, list_models

from tl_lightning.backbones._base import Backbone, ImagePreprocess, LayerGroup
from tl_lightning.backbones._grouping import LayerSpec, build_layer_groups, spec_by_children, spec_from_prefixes
from tl_lightning.backbones._registry import register_family
from tl_lightning.backbones._weights import KeyMap, is_local_weights, load_weights
from tl_lightning.errors import ConfigurationError, UnknownNameError, WeightsUnavailableError, did_you_mean

__all__ = ["TorchvisionBackbone", "torchvision_layer_spec"]

_CLASSIFIER_ATTRS = ("fc", "classifier", "heads", "head")
_INTERPOLATIONS = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "nearest-exact": "nearest"}
# Models whose training-mode output carries auxiliary logits unless told otherwise.
_AUX_LOGITS = ("googlenet", "inception_v3")


class TorchvisionBackbone(Backbone):
    """Adapter for any torchvision classification model, classifier removed.

    Args:
        arch: A name from ``torchvision.models.list_models(module=torchvision.models)``
            (``"resnet50"``, ``"efficientnet_b0"``, ``"vit_b_16"``, ...).
        pretrained: Load pretrained weights. Ignored weights are never replaced by random init:
            when they cannot be had, :class:`~tl_lightning.errors.WeightsUnavailableError`.
        weights: ``None`` (the enum's ``DEFAULT`` when ``pretrained``), a weights enum member
            name (``"IMAGENET1K_V2"``), or a local checkpoint file loaded with strict checking
            (classifier keys may be present or absent). Ignored when ``pretrained=False``.
        key_map: Regex rules ``[(pattern, replacement or None), ...]`` renaming the keys of a
            local checkpoint before the strict load.
        **model_kwargs: Passed to ``torchvision.models.get_model`` (``image_size`` for ViT,
            ``stochastic_depth_prob``, ...).

    Example:
        >>> bb = TorchvisionBackbone("resnet18", pretrained=False)
        >>> bb.feature_dim, bb.layer_group_names()
        (512, ['stem', 'layer1', 'layer2', 'layer3', 'layer4'])
    """

    def __init__(
        self,
        arch: str,
        pretrained: bool = True,
        weights: str | None = None,
        key_map: KeyMap | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        known = list_models(module=torchvision.models)
        if arch not in known:
            raise UnknownNameError(
                f"unknown torchvision model {arch!r}{did_you_mean(arch, known)} "
                "List them with `torchvision.models.list_models(module=torchvision.models)`."
            )
        if arch in _AUX_LOGITS:
            model_kwargs.setdefault("aux_logits", False)
        local = pretrained and weights is not None and is_local_weights(weights)
        enum_weights = _resolve_enum(arch, weights) if pretrained and not local else None
        try:
            if enum_weights is not None:
                self.model = _download(arch, enum_weights, model_kwargs)
                self.pretrained_source = f"tv:{arch}.{enum_weights.name}"
            else:
                self.model = get_model(arch, weights=None, **model_kwargs)
        except TypeError as err:
            shown = ", ".join(f"{k}={v!r}" for k, v in model_kwargs.items() if f"'{k}'" in str(err)) or str(err)
            hint = " (pooling is an option of hf: backbones)" if "pooling" in model_kwargs else ""
            raise ConfigurationError(
                f"torchvision model {arch!r} does not take {shown}{hint}. The tv adapter takes ['pretrained', "
                "'weights', 'key_map']; other keyword arguments go to torchvision.models.get_model (e.g. "
                "image_size for ViT, stochastic_depth_prob). Fix: remove or rename the argument."
            ) from err
        path, layer = _final_classifier_layer(self.model)
        self.feature_dim = int(layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels)
        self.model.set_submodule(path, nn.Identity())
        self._removed_classifier = path
        if local:
            rules = list(key_map.items()) if isinstance(key_map, Mapping) else list(key_map or [])
            rules.append((rf"^{re.escape(path)}\.(weight|bias)$", None))
            load_weights(self.model, weights, key_map=rules, strict=True)
            self.pretrained_source = str(weights)
        self.preprocess = _preprocess(arch, enum_weights, model_kwargs.get("image_size"))
        self._finalize()

    def _build_layer_groups(self) -> list[LayerGroup]:
        spec = torchvision_layer_spec(self.model)
        assert spec is not None
        return build_layer_groups(self.model, spec, prefix="model")

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out.flatten(1) if out.ndim > 2 else out


def torchvision_layer_spec(model: nn.Module) -> LayerSpec | None:
    """The layer spec of a torchvision classification model (``None`` for anything else).

    Works on the full model (its last classifier layer is the head) and on the adapter's
    classifier-less one. See the module docstring for the grouping of each family. ViTs take
    no weight decay on ``class_token`` and ``encoder.pos_embedding`` (nor on 1-d tensors).
    """
    if type(model) is nn.Sequential:
        return _resnet_in_sequential_spec(model)
    if not type(model).__module__.startswith("torchvision.models"):
        return None
    cls = type(model).__name__
    no_wd: list[str] = []
    if cls == "ResNet":
        spec = [("stem", ["conv1", "bn1"]), *((f"layer{i}", [f"layer{i}"]) for i in range(1, 5)), ("fc", ["fc"])]
    elif cls in ("EfficientNet", "MobileNetV2", "MobileNetV3"):
        n = len(model.features)
        spec = [("stem", ["features.0"]), *((f"features.{i}", [f"features.{i}"]) for i in range(1, n))]
        spec.append(("classifier", ["classifier"]))
    elif cls == "ConvNeXt" and len(model.features) == 8:
        spec = [
            ("stem", ["features.0"]),
            ("stage1", ["features.1"]),
            ("stage2", ["features.2", "features.3"]),
            ("stage3", ["features.4", "features.5"]),
            ("stage4", ["features.6", "features.7"]),
            ("norm", ["classifier.0"]),
            ("classifier", ["classifier"]),
        ]
    elif cls == "VisionTransformer":
        layers = [f"encoder.layers.{name}" for name, _ in model.encoder.layers.named_children()]
        spec = [
            ("stem", ["conv_proj", "class_token", "encoder.pos_embedding"]),
            *((layer.rsplit(".", 1)[-1], [layer]) for layer in layers),
            ("norm", ["encoder.ln"]),
            ("heads", ["heads"]),
        ]
        no_wd = ["class_token", "encoder.pos_embedding"]
    else:
        fallback = spec_by_children(model)
        head = _classifier_path(model)
        return LayerSpec(fallback.groups, head=[head] if head else [], notes=fallback.notes)
    head = _classifier_path(model)
    return spec_from_prefixes(model, spec, rest="by_child", head=[head] if head else [], no_weight_decay=no_wd)


_RESNET_BLOCK_MODULES = ("torchvision.models.resnet", "timm.models.resnet")


def _resnet_in_sequential_spec(seq: nn.Sequential) -> LayerSpec | None:
    """A torchvision / timm ResNet trunk unpacked into ``nn.Sequential(*list(resnet.children())[:k])``.

    Lightning's own fine-tuning example (and much user code) wraps a ResNet that way, which
    leaves its children named ``'0'`` .. ``'8'``. Recognized by its four stages (Sequentials of
    ResNet blocks), it gets the ResNet's names: ``stem`` (everything before the first stage),
    ``layer1`` .. ``layer4``, and a trailing ``Linear`` as the head.
    """
    children = list(seq.named_children())

    def is_stage(m: nn.Module) -> bool:
        blocks = list(m.children()) if isinstance(m, nn.Sequential) else []
        return bool(blocks) and all(
            type(b) is type(blocks[0]) and type(b).__module__.startswith(_RESNET_BLOCK_MODULES) for b in blocks
        )

    stages = [i for i, (_, m) in enumerate(children) if is_stage(m)]
    if len(stages) != 4 or stages != list(range(stages[0], stages[0] + 4)):
        return None
    first = stages[0]
    stem = [n for n, m in children[:first] if any(True for _ in m.parameters())]
    groups: list[tuple[str, list[str]]] = [("stem", stem)] if stem else []
    groups += [(f"layer{k + 1}", [children[i][0]]) for k, i in enumerate(stages)]
    tail = [(n, m) for n, m in children[first + 4 :] if any(True for _ in m.parameters())]
    head = [n for n, m in tail if isinstance(m, nn.Linear) and n == children[-1][0]]
    groups += [("fc" if n in head else n, [n]) for n, _ in tail]
    return spec_from_prefixes(seq, groups, rest="by_child", head=head)


def _classifier_path(model: nn.Module) -> str | None:
    """Path of the model's final classifier layer when it holds parameters (not the adapter's Identity)."""
    try:
        path, layer = _final_classifier_layer(model)
    except UnknownNameError:
        return None
    return path if any(True for _ in layer.parameters()) else None


def _resolve_enum(arch: str, weights: str | None) -> Any:
    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError) as err:
        raise WeightsUnavailableError(
            f"torchvision model {arch!r} has no pretrained weights. Fix: pass pretrained=False, "
            "or weights='<local checkpoint file>'."
        ) from err
    if weights is None or weights == "DEFAULT":
        return enum.DEFAULT
    name = str(weights).split(".")[-1]  # accept "ResNet50_Weights.IMAGENET1K_V2"
    members = [m.name for m in enum]
    if name not in members:
        raise UnknownNameError(
            f"unknown weights {weights!r} for torchvision model {arch!r}{did_you_mean(name, members)} "
            f"Choices: {members + ['DEFAULT']}, or a local checkpoint file."
        )
    return enum[name]


def _download(arch: str, enum_weights: Any, model_kwargs: dict[str, Any]) -> nn.Module:
    try:
        return get_model(arch, weights=enum_weights, **model_kwargs)
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
        raise WeightsUnavailableError(
            f"could not load torchvision weights {arch}.{enum_weights.name} from {enum_weights.url}: "
            f"{type(err).__name__}: {err}\n"
            f"Fix: put the file in torch's hub cache ({torch.hub.get_dir()}/checkpoints/), pass "
            "weights='<local checkpoint file>', or pretrained=False to train from random init on purpose."
        ) from err


def _final_classifier_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """Path and module of the last Linear (or 1x1 conv, SqueezeNet) of the classifier."""
    for attr in _CLASSIFIER_ATTRS:
        head = getattr(model, attr, None)
        if not isinstance(head, nn.Module):
            continue
        if isinstance(head, nn.Linear):
            return attr, head
        last = [(f"{attr}.{n}", m) for n, m in head.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n]
        if last:
            return last[-1]
    raise UnknownNameError(
        f"cannot find the classifier of torchvision model {type(model).__name__} (looked for "
        f"{list(_CLASSIFIER_ATTRS)}); use timm or wrap the model in your own Backbone subclass."
    )


def _preprocess(arch: str, enum_weights: Any, image_size: int | None) -> ImagePreprocess:
    """Preprocess from the weights enum (``DEFAULT``'s when random init), else ImageNet defaults."""
    if enum_weights is None:
        try:
            enum_weights = get_model_weights(arch).DEFAULT
        except (ValueError, KeyError, AttributeError):
            enum_weights = None
    pre = ImagePreprocess()
    if enum_weights is not None:
        t = enum_weights.transforms()
        crop = int(t.crop_size[0])
        resize = int(t.resize_size[0])
        interp = _INTERPOLATIONS.get(getattr(t.interpolation, "value", str(t.interpolation)), "bilinear")
        pre = ImagePreprocess(
            input_size=(3, crop, crop),
            mean=tuple(float(m) for m in t.mean),
            std=tuple(float(s) for s in t.std),
            interpolation=interp,  # type: ignore[arg-type]
            crop_pct=crop / resize,
        )
    if image_size is not None:
        pre = pre.with_size(int(image_size))
    return pre


def _list_tv() -> list[str]:
    return list_models(module=torchvision.models)


@register_family("tv", list_names=_list_tv, description="torchvision classification models", layer_spec=torchvision_layer_spec)
def _create_tv(arch: str, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> TorchvisionBackbone:
    return TorchvisionBackbone(arch, pretrained=pretrained, weights=weights, **kwargs)
