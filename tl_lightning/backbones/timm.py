"""timm backbones: ``timm:<arch>`` or ``timm:<arch>.<pretrained tag>``.

Layer groups come from the model's own ``group_matcher`` (the grouping timm uses for its
layer-wise LR decay): stem, then each stage (``granularity="coarse"``, default) or each block
(``"fine"``), the final norm joined to the last group. Preprocessing comes from the model's
pretrained config via ``timm.data.resolve_model_data_config``.
"""

from __future__ import annotations

from typing import Any, Literal

import timm

from torch import Tensor, nn

from tl_lightning.backbones._base import Backbone, ImagePreprocess, LayerGroup, module_groups_from_param_groups
from tl_lightning.backbones._naming import group_name_from_params
from tl_lightning.backbones._registry import register_family
from tl_lightning.backbones._weights import KeyMap, is_local_weights, load_weights
from tl_lightning.errors import ConfigurationError, UnknownNameError, WeightsUnavailableError, did_you_mean

__all__ = ["TimmBackbone", "is_timm_model", "timm_param_groups"]

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
        try:
            self.model = timm.create_model(arch, pretrained=hub_pretrained, **model_kwargs)
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
        named = timm_param_groups(self.model, self.granularity)
        return module_groups_from_param_groups(self, [(g, [f"model.{n}" for n in pns]) for g, pns in named])

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model(x)


def is_timm_model(module: nn.Module) -> bool:
    """True for a model built by timm (it carries timm's ``group_matcher``)."""
    return callable(getattr(module, "group_matcher", None)) and type(module).__module__.startswith("timm.")


def timm_param_groups(
    model: nn.Module, granularity: Literal["coarse", "fine"] = "coarse"
) -> list[tuple[str, list[str]]]:
    """Group a timm model's parameter names with the model's own ``group_matcher``.

    Args:
        model: A timm model (anything with timm's ``group_matcher``).
        granularity: ``"coarse"`` groups by stage, ``"fine"`` by block.

    Returns:
        ``[(group name, [parameter names relative to model]), ...]`` input -> output; names
        are derived from the modules the parameters live in (``stem``, ``stages.0``, ...).
    """
    from timm.models import group_parameters

    matcher = model.group_matcher(coarse=granularity == "coarse")
    grouped = group_parameters(model, matcher)
    named: list[tuple[str, list[str]]] = []
    taken: set[str] = set()
    all_names = [n for n, _ in model.named_parameters()]
    for i, pnames in enumerate(grouped.values()):
        name = group_name_from_params(pnames, i, taken, all_names)
        taken.add(name)
        named.append((name, list(pnames)))
    return named


def _list_timm() -> list[str]:
    return timm.list_models()


@register_family("timm", list_names=_list_timm, description="any timm image model")
def _create_timm(arch: str, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> TimmBackbone:
    return TimmBackbone(arch, pretrained=pretrained, weights=weights, **kwargs)


