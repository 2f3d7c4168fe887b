"""timm backbones: ``timm:<arch>`` or ``timm:<arch>.<pretrained tag>``.

Layer groups come from the model's own ``group_matcher`` (the grouping timm uses for its
layer-wise LR decay): stem, then each stage (``granularity="coarse"``, default) or each block
(``"fine"``), the final norm joined to the last group. The model declares its classifier
(``pretrained_cfg["classifier"]``) and what takes no weight decay (``no_weight_decay()``);
:func:`timm_layer_spec` hands both to the grouping engine. Preprocessing comes from the
model's pretrained config via ``timm.data.resolve_model_data_config``.
"""

from __future__ import annotations

from typing import Any, Literal

import timm

from torch import Tensor, nn

from tl_lightning.backbones._base import Backbone, ImagePreprocess, LayerGroup
from tl_lightning.backbones._grouping import LayerSpec, build_layer_groups
from tl_lightning.backbones._registry import register_family
from tl_lightning.backbones._weights import KeyMap, is_local_weights, load_weights
from tl_lightning.errors import ConfigurationError, UnknownNameError, WeightsUnavailableError, did_you_mean

__all__ = ["TimmBackbone", "is_timm_model", "timm_layer_spec", "timm_attention_projections"]

# Keyword arguments the adapter itself takes; everything else goes to timm.create_model.
_ADAPTER_ARGS = ("pretrained", "weights", "key_map", "granularity")

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class TimmBackbone(Backbone):
    """Adapter for any timm model (built with ``num_classes=0``: pooled features, no classifier).

    Args:
        arch: timm model name, optionally with a pretrained tag (``"resnet50.a1_in1k"``).
        pretrained: Load pretrained weights (hub by default, or ``weights``).
        weights: A local checkpoint file (``.pth``, ``.bin``, ``.safetensors``) or a timm
            pretrained tag; ``None`` uses timm's default tag for ``arch``.
        key_map: Regex rules ``[(pattern, replacement), ...]`` applied to checkpoint keys before
            a strict load (for third-party checkpoints).
        granularity: ``"coarse"`` groups by stage, ``"fine"`` by block.
        **model_kwargs: Passed to ``timm.create_model`` (``drop_path_rate``, ``in_chans``, ...).
    """

    def __init__(
        self,
        arch: str,
        pretrained: bool = True,
        weights: str | None = None,
        key_map: KeyMap | None = None,
        granularity: Literal["coarse", "fine"] = "coarse",
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        if granularity not in ("coarse", "fine"):
            raise ConfigurationError(f"granularity must be 'coarse' or 'fine', got {granularity!r}")
        base_arch = arch.split(".", 1)[0]
        if not timm.is_model(base_arch):
            raise UnknownNameError(
                f"unknown timm model {arch!r}{did_you_mean(base_arch, timm.list_models())} "
                "List them with `timm.list_models('*pattern*')`."
            )
        self.granularity = granularity
        model_kwargs.setdefault("num_classes", 0)
        local = pretrained and weights is not None and is_local_weights(weights)
        if pretrained and weights is not None and not local:
            arch = f"{base_arch}.{weights}"
        hub_pretrained = pretrained and not local
        if hub_pretrained and "." in arch:
            _check_tag(arch)
        try:
            self.model = timm.create_model(arch, pretrained=hub_pretrained, **model_kwargs)
        except TypeError as err:
            raise _unknown_kwargs_error(arch, model_kwargs, err) from err
        except (RuntimeError, OSError, ValueError) as err:
            if not hub_pretrained:
                raise
            raise WeightsUnavailableError(
                f"could not load pretrained weights for timm model {arch!r}: {type(err).__name__}: {err}\n"
                "Fix: check the network / HF_HUB_OFFLINE cache, pass weights='<local file>' "
                "(with key_map=... for checkpoints from other code bases), or pretrained=False "
                "to train from random init on purpose."
            ) from err
        if local:
            load_weights(self.model, weights, key_map=key_map, strict=True)
            self.pretrained_source = str(weights)
        elif hub_pretrained:
            self.pretrained_source = f"timm:{arch}"
        cfg = timm.data.resolve_model_data_config(self.model)
        interp = cfg.get("interpolation", "bilinear")
        self.feature_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        self.preprocess = ImagePreprocess(
            input_size=tuple(cfg["input_size"]),
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
            interpolation=interp if interp in _INTERPOLATIONS else "bicubic",
            crop_pct=float(cfg.get("crop_pct", 0.875)),
        )
        self._finalize()

    def _build_layer_groups(self) -> list[LayerGroup]:
        spec = timm_layer_spec(self.model, self.granularity)
        assert spec is not None
        return build_layer_groups(self.model, spec, prefix="model")

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model(x)


def is_timm_model(module: nn.Module) -> bool:
    """True for a model built by timm (it carries timm's ``group_matcher``)."""
    return callable(getattr(module, "group_matcher", None)) and type(module).__module__.startswith("timm.")


def timm_layer_spec(model: nn.Module, granularity: Literal["coarse", "fine"] = "coarse") -> LayerSpec | None:
    """The layer spec of a timm model (``None`` for anything else), from the model's own declarations.

    Groups: timm's ``group_matcher`` (``coarse``: stem, each stage; ``fine``: each block), named
    after the modules they hold (``stem``, ``stages.0``, ``layer1``). Head: the classifier timm
    names in ``pretrained_cfg["classifier"]`` (absent when built with ``num_classes=0``). No
    weight decay: the model's ``no_weight_decay()`` (``pos_embed``, ``cls_token``, ...) plus 1-d
    tensors.

    Example:
        >>> spec = timm_layer_spec(timm.create_model("test_resnet"))
        >>> spec.head, len(spec.groups)
        (['fc'], 6)
    """
    if not is_timm_model(model):
        return None
    from timm.models import group_parameters

    matcher = model.group_matcher(coarse=granularity == "coarse")
    grouped = group_parameters(model, matcher)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    heads = [classifier] if isinstance(classifier, str) else [str(c) for c in classifier or ()]
    no_wd_fn = getattr(model, "no_weight_decay", None)
    no_wd = sorted(no_wd_fn()) if callable(no_wd_fn) else []
    return LayerSpec(
        [(None, list(pnames)) for pnames in grouped.values()],
        head=heads,
        no_weight_decay=no_wd,
        adapter_targets=timm_attention_projections(model),
    )


#: How timm's attention blocks name their projections (ViT, DeiT, Swin, BEiT: ``attn.qkv`` and
#: ``attn.proj``; EVA-style blocks: separate ``attn.q_proj`` / ``k_proj`` / ``v_proj``).
TIMM_ATTENTION_PROJECTIONS = ("attn.qkv", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.proj")


def timm_attention_projections(model: nn.Module) -> list[str]:
    """Names of the attention projection layers of a timm model (the default LoRA targets).

    Empty for models without attention blocks (ResNets, ConvNeXts, EfficientNets).

    Example:
        >>> timm_attention_projections(timm.create_model("test_vit"))[:2]
        ['blocks.0.attn.qkv', 'blocks.0.attn.proj']
    """
    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and any(name.endswith("." + s) or name == s for s in TIMM_ATTENTION_PROJECTIONS)
    ]


def _check_tag(arch: str) -> None:
    """An unknown pretrained tag lists the tags timm knows for the architecture."""
    base, tag = arch.split(".", 1)
    tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{base}.*")]
    if tags and tag not in tags:
        raise UnknownNameError(
            f"unknown pretrained tag {tag!r} for timm model {base!r}{did_you_mean(tag, tags)} Valid tags: {tags} "
            "(or weights='<local checkpoint file>')."
        )


def _unknown_kwargs_error(arch: str, model_kwargs: dict[str, Any], err: TypeError) -> ConfigurationError:
    bad = [k for k in model_kwargs if repr(k) in str(err) or f"'{k}'" in str(err)]
    shown = ", ".join(f"{k}={model_kwargs[k]!r}" for k in bad) or str(err)
    hint = " (pooling is an option of hf: backbones)" if "pooling" in bad else ""
    return ConfigurationError(
        f"timm model {arch!r} does not take {shown}{hint}. The timm adapter takes {list(_ADAPTER_ARGS)}; "
        "other keyword arguments go to timm.create_model (e.g. drop_rate, drop_path_rate, in_chans, img_size). "
        "Fix: remove or rename the argument (backbone.kwargs / backbone_kwargs)."
    )


def _list_timm() -> list[str]:
    return timm.list_models()


@register_family("timm", list_names=_list_timm, description="any timm image model", layer_spec=timm_layer_spec)
def _create_timm(arch: str, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> TimmBackbone:
    return TimmBackbone(arch, pretrained=pretrained, weights=weights, **kwargs)


