"""The backbone adapter contract.

Everything in tl_lightning that decides "which layers" (unfreezing, layer-wise LR decay, BN
handling, L2-SP, LoRA targets) talks to :class:`Backbone` and never to a model family
directly. An adapter wraps one pretrained network and exposes:

* ``feature_dim``: the size of :meth:`Backbone.forward_features` output;
* ``preprocess``: what the inputs must look like (:class:`ImagePreprocess` or
  :class:`TextPreprocess`), so data modules build matching transforms / tokenization;
* :meth:`Backbone.layer_groups`: named groups ordered input -> output, disjoint, together
  covering every parameter of the backbone (checked by :func:`check_layer_groups` when the
  adapter is built);
* :meth:`Backbone.forward_features`: ``(batch, feature_dim)`` features for a batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from tl_lightning.errors import LayerGroupError

__all__ = [
    "Backbone",
    "LayerGroup",
    "ImagePreprocess",
    "TextPreprocess",
    "PreprocessConfig",
    "check_layer_groups",
]


@dataclass(frozen=True, eq=False)
class LayerGroup:
    """A named, contiguous slice of a network that is frozen, unfrozen and scheduled as a unit.

    Attributes:
        name: Unique name (``"stem"``, ``"layer3"``, ``"encoder.layer.5"``). Optimizer param
            groups and log keys are named after it.
        params: ``(qualified name, parameter)`` pairs, names relative to the module the groups
            were built from.
        modules: Submodules whose parameters all belong to this group. Used for module-level
            behaviour (BatchNorm eval mode of frozen groups); may be empty for groups made of
            bare parameters such as a ViT's ``cls_token``.
        is_head: The group is the model's task head (its classifier, as the model family
            declares it): always trainable, never scheduled, at the head's LR.
        no_weight_decay: Names (as in ``params``) of the parameters that take no weight decay:
            1-d tensors (biases, norm scales) and what the model family declares (timm's
            ``no_weight_decay()``: ``pos_embed``, ``cls_token``, ...).
        adapter_targets: ``(qualified name, module)`` pairs of the group's layers that adapters
            (LoRA) target by default, as the model family declares them (the attention
            projections of transformer blocks); empty when the family declares none.
    """

    name: str
    params: tuple[tuple[str, nn.Parameter], ...]
    modules: tuple[tuple[str, nn.Module], ...] = ()
    is_head: bool = False
    no_weight_decay: frozenset[str] = frozenset()
    adapter_targets: tuple[tuple[str, nn.Module], ...] = ()

    def parameters(self) -> Iterator[nn.Parameter]:
        """Iterate over the group's parameters."""
        for _, p in self.params:
            yield p

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Iterate over ``(name, parameter)`` pairs."""
        yield from self.params

    @property
    def num_params(self) -> int:
        """Number of scalar parameters in the group."""
        return sum(p.numel() for _, p in self.params)

    def __repr__(self) -> str:
        head = ", head" if self.is_head else ""
        return f"LayerGroup(name={self.name!r}, tensors={len(self.params)}, numel={self.num_params}{head})"


@dataclass(frozen=True)
class ImagePreprocess:
    """How images must be prepared for an image backbone.

    Attributes:
        input_size: ``(channels, height, width)`` the network was trained at.
        mean: Per-channel normalization mean (on 0-1 scaled pixels).
        std: Per-channel normalization std.
        interpolation: Resize interpolation, ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        crop_pct: Eval-time center-crop fraction (resize to ``size / crop_pct`` then crop).
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    crop_pct: float = 0.875
    modality: Literal["image"] = field(default="image", init=False)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.input_size[1], self.input_size[2])

    def with_size(self, size: int | tuple[int, int]) -> ImagePreprocess:
        """Return a copy for another input resolution (e.g. 32-64 px in tests or fast runs)."""
        h, w = (size, size) if isinstance(size, int) else size
        return ImagePreprocess(
            input_size=(self.input_size[0], h, w),
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
        )


@dataclass(frozen=True)
class TextPreprocess:
    """How texts must be prepared for a text backbone.

    Attributes:
        tokenizer: A Hugging Face tokenizer (callable on a list of strings).
        max_length: Truncation / padding length in tokens.
    """

    tokenizer: Any
    max_length: int = 128
    modality: Literal["text"] = field(default="text", init=False)

    def with_max_length(self, max_length: int) -> TextPreprocess:
        """Return a copy with another ``max_length``."""
        return TextPreprocess(tokenizer=self.tokenizer, max_length=max_length)

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenize ``texts`` to a batch of tensors (``input_ids``, ``attention_mask``, ...)."""
        return dict(
            self.tokenizer(
                list(texts),
                max_length=self.max_length,
                truncation=True,
                padding=True,
                return_tensors="pt",
            )
        )


PreprocessConfig = ImagePreprocess | TextPreprocess


class Backbone(nn.Module):
    """Base class of backbone adapters: a pretrained trunk with no task head.

    Subclasses set ``feature_dim`` and ``preprocess`` in ``__init__``, implement
    :meth:`forward_features` and :meth:`_build_layer_groups`, and call
    :meth:`_finalize` at the end of ``__init__`` so the contract is checked at build time.

    Attributes:
        name: The registry name the backbone was created from (``"timm:resnet50"``).
        feature_dim: Size of the last dimension of :meth:`forward_features` output.
        preprocess: Input preparation the weights expect.
        pretrained_source: Where the weights came from (``None`` for random init).
    """

    name: str = ""
    feature_dim: int
    preprocess: PreprocessConfig
    pretrained_source: str | None = None

    def layer_groups(self) -> list[LayerGroup]:
        """Named layer groups, ordered input -> output, disjoint, covering every parameter.

        The list is built once and cached; parameters are matched by identity, so groups stay
        valid when the module moves between devices (``.to()`` keeps Parameter objects).
        """
        groups = self.__dict__.get("_layer_groups_cache")
        if groups is None:
            groups = self._build_layer_groups()
            check_layer_groups(self, groups)
            self.__dict__["_layer_groups_cache"] = groups
        return groups

    def layer_group_names(self) -> list[str]:
        """Names of :meth:`layer_groups`, input -> output."""
        return [g.name for g in self.layer_groups()]

    def adapter_targets(self) -> list[str]:
        """Names of the layers adapters (LoRA) target by default, as the model family declares them.

        The attention projections of transformer blocks (timm ``attn.qkv`` / ``attn.proj``,
        Hugging Face ``query`` / ``key`` / ``value``); empty for families that declare none (CNNs).
        """
        return [name for g in self.layer_groups() for name, _ in g.adapter_targets]

    def reset_layer_groups(self) -> None:
        """Forget the cached :meth:`layer_groups` (after modules were replaced, e.g. adapters injected)."""
        self.__dict__.pop("_layer_groups_cache", None)

    def _build_layer_groups(self) -> list[LayerGroup]:
        raise NotImplementedError

    def forward_features(self, x: Any) -> Tensor:
        """Return pooled features of shape ``(batch, feature_dim)``."""
        raise NotImplementedError

    def forward(self, x: Any) -> Tensor:
        return self.forward_features(x)

    def rebuild_spec(self) -> dict[str, Any] | None:
        """What a checkpoint must carry to rebuild this backbone's architecture with no network.

        ``None`` (the default) when the registry name alone rebuilds it (timm, torchvision: the
        architecture is code). Adapters whose architecture lives in files (Hugging Face config,
        tokenizer, image processor) return ``{"files": {name: bytes}, "name": "hf:{folder}",
        "kwargs": {...}}``: ``load_from_checkpoint`` writes the files to a folder and builds
        ``name.format(folder=...)`` with ``kwargs`` and ``pretrained=False``.
        """
        return None

    def _finalize(self) -> None:
        """Check the contract right after construction (call at the end of ``__init__``)."""
        if not isinstance(getattr(self, "feature_dim", None), int) or self.feature_dim <= 0:
            raise LayerGroupError(
                f"{type(self).__name__} must set a positive integer feature_dim, got "
                f"{getattr(self, 'feature_dim', None)!r}"
            )
        if not isinstance(getattr(self, "preprocess", None), (ImagePreprocess, TextPreprocess)):
            raise LayerGroupError(f"{type(self).__name__} must set preprocess to ImagePreprocess or TextPreprocess")
        self.layer_groups()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}"


def check_layer_groups(root: nn.Module, groups: Sequence[LayerGroup]) -> None:
    """Raise :class:`LayerGroupError` unless ``groups`` are named, unique, disjoint and cover ``root``.

    Args:
        root: The module whose parameters the groups must partition.
        groups: Candidate layer groups.
    """
    if not groups:
        raise LayerGroupError(f"{type(root).__name__} produced no layer groups")
    names = [g.name for g in groups]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LayerGroupError(f"duplicate layer group names {dupes}; names must be unique: {names}")
    owner: dict[int, str] = {}
    for g in groups:
        if not g.name:
            raise LayerGroupError("layer group with an empty name")
        if not g.params:
            raise LayerGroupError(f"layer group {g.name!r} has no parameters")
        for pname, p in g.params:
            if id(p) in owner:
                raise LayerGroupError(
                    f"parameter {pname!r} is in both layer groups {owner[id(p)]!r} and {g.name!r}; groups must be disjoint"
                )
            owner[id(p)] = g.name
    missing = [n for n, p in root.named_parameters() if id(p) not in owner]
    if missing:
        raise LayerGroupError(
            f"{len(missing)} parameter(s) of {type(root).__name__} are in no layer group, e.g. {missing[:5]}; "
            "layer groups must cover every parameter"
        )
    all_ids = {id(p) for p in root.parameters()}
    foreign = [f"{g.name}:{n}" for g in groups for n, p in g.params if id(p) not in all_ids]
    if foreign:
        raise LayerGroupError(f"layer groups hold parameters that are not in the module: {foreign[:5]}")
