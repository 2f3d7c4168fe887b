"""Hugging Face transformers backbones: ``hf:<hub id or local folder>``.

Encoder models loaded with ``AutoModel`` (BERT family incl. MiniLM, RoBERTa, DistilBERT, ViT,
...). Layer groups: ``embeddings``, each layer of the encoder (found generically as the largest
``nn.ModuleList``: ``encoder.layer.N``, DistilBERT's ``transformer.layer.N``, ViT's
``layers.N``), then the final norm when the model has one (ViT's ``layernorm``).

The pooler is not built (``add_pooling_layer=False`` where the model class takes it): the
features are pooled from ``last_hidden_state`` (``cls`` or ``mean``), so a pooler would hold
parameters that never receive a gradient, which breaks DDP's reducer and wastes optimizer
state. A checkpoint's pooler weights are reported by transformers as unused and ignored.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from tl_lightning.backbones._base import Backbone, ImagePreprocess, LayerGroup, TextPreprocess
from tl_lightning.backbones._grouping import LayerSpec, build_layer_groups, spec_by_children
from tl_lightning.backbones._naming import group_name_from_params
from tl_lightning.backbones._registry import register_family
from tl_lightning.backbones._weights import KeyMap, is_local_weights, load_weights
from tl_lightning.errors import ConfigurationError, UnknownNameError, WeightsUnavailableError

__all__ = ["HFBackbone", "hf_layer_spec"]

Pooling = Literal["auto", "cls", "mean"]
_POOLINGS = ("auto", "cls", "mean")
# Files that mark a sentence-transformers folder, whose embeddings are mean-pooled.
_SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json")
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


class HFBackbone(Backbone):
    """Adapter for a Hugging Face transformers encoder (text or image).

    Args:
        source: A hub id (``"bert-base-uncased"``) or a local folder saved with
            ``save_pretrained`` (config, weights, tokenizer or image processor).
        pretrained: Load the weights. ``False`` builds the architecture from the config with
            random init (the config and tokenizer are still read from ``source``).
        weights: Optional local folder or file holding the weights instead of ``source``
            (a file is loaded with strict checking after ``key_map``). Ignored when
            ``pretrained=False``.
        key_map: Regex rules renaming the keys of a local weights file.
        pooling: ``"cls"`` (first token; the usual choice for BERT classifiers and ViT),
            ``"mean"`` (attention-mask-weighted mean over tokens; what sentence-transformers
            models such as all-MiniLM-L6-v2 were trained for) or ``"auto"`` (default):
            ``"mean"`` for a sentence-transformers folder (it has ``modules.json``),
            ``"cls"`` otherwise. The resolved choice is in ``self.pooling``.
        max_length: Token budget of the text preprocess; default
            ``min(128, tokenizer.model_max_length, config.max_position_embeddings)``.
        **model_kwargs: Passed to ``from_pretrained`` / the model class
            (``attn_implementation``, ``hidden_dropout_prob``, ...).

    Inputs of :meth:`forward_features`: for text a mapping of tensors (``input_ids``,
    ``attention_mask``, ...: what ``self.preprocess(texts)`` returns); for images a pixel
    tensor ``(batch, 3, H, W)``.

    Example:
        >>> bb = HFBackbone("/path/to/all-MiniLM-L6-v2", pooling="mean")  # doctest: +SKIP
        >>> bb.forward_features(bb.preprocess(["a sentence"])).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """

    def __init__(
        self,
        source: str,
        pretrained: bool = True,
        weights: str | None = None,
        key_map: KeyMap | None = None,
        pooling: Pooling = "auto",
        max_length: int | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        if pooling not in _POOLINGS:
            raise ConfigurationError(f"pooling must be one of {list(_POOLINGS)}, got {pooling!r}")
        source = str(source)
        local_source = _is_local_source(source)
        if local_source:
            source = str(Path(source).expanduser())
            if not Path(source).is_dir():
                raise ConfigurationError(
                    f"hf backbone folder {source!r} does not exist (or is not a folder). Fix: pass a folder "
                    "saved with `save_pretrained` (config.json, weights, tokenizer), or a hub id."
                )
        weights_dir: str | None = None
        weights_file: str | None = None
        if pretrained and weights is not None:
            if not is_local_weights(weights):
                raise ConfigurationError(
                    f"hf weights must be a local folder or file, got {weights!r}; for a hub model use "
                    "'hf:<hub id>' as the backbone name."
                )
            w = Path(str(weights)).expanduser()
            if w.is_dir():
                weights_dir = str(w)
            else:
                weights_file = str(w)
        self.source = source
        self.config = _load("config", source, local_source, lambda: _auto_config(weights_dir or source))
        model_cls = _model_class(self.config, source)
        init_kwargs = dict(model_kwargs)
        if "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters:
            init_kwargs.setdefault("add_pooling_layer", False)
        if pretrained and weights_file is None:
            src = weights_dir or source
            model, info = _load(
                "weights",
                src,
                local_source or weights_dir is not None,
                lambda: _quiet_from_pretrained(model_cls, src, init_kwargs),
            )
            missing = list(info.get("missing_keys", [])) + [str(m) for m in info.get("mismatched_keys", [])]
            if missing:
                raise WeightsUnavailableError(
                    f"weights in {src!r} do not cover {model_cls.__name__}: {len(missing)} missing or "
                    f"mismatched keys (e.g. {missing[:5]}); they would be left at random init. Fix: point "
                    "hf:<folder> at a checkpoint of this architecture, or pass pretrained=False."
                )
            self.model = model
            self.pretrained_source = f"hf:{src}"
        else:
            self.model = model_cls(self.config, **init_kwargs)
            if weights_file is not None:
                load_weights(self.model, weights_file, key_map=key_map, strict=True)
                self.pretrained_source = weights_file
        self._forward_args = set(inspect.signature(self.model.forward).parameters)
        self.modality: Literal["text", "image"] = (
            "image" if getattr(self.model, "main_input_name", "input_ids") == "pixel_values" else "text"
        )
        if pooling == "auto":
            folders = [f for f in (source if local_source else None, weights_dir) if f]
            st = any((Path(f) / name).is_file() for f in folders for name in _SENTENCE_TRANSFORMERS_FILES)
            pooling = "mean" if st and self.modality == "text" else "cls"
        self.pooling: Literal["cls", "mean"] = pooling  # type: ignore[assignment]
        self.feature_dim = int(self.config.hidden_size)
        if self.modality == "text":
            self.preprocess = self._text_preprocess(weights_dir, source, local_source, max_length)
        else:
            self.preprocess = self._image_preprocess(weights_dir, source, local_source)
        self._finalize()

    def _text_preprocess(
        self, weights_dir: str | None, source: str, local_source: bool, max_length: int | None
    ) -> TextPreprocess:
        from transformers import AutoTokenizer

        tok_src = weights_dir if weights_dir and _has_tokenizer(weights_dir) else source
        tokenizer = _load("tokenizer", tok_src, local_source, lambda: AutoTokenizer.from_pretrained(tok_src))
        limits = [128, getattr(tokenizer, "model_max_length", None), getattr(self.config, "max_position_embeddings", None)]
        default = min(int(v) for v in limits if isinstance(v, int) and v > 0)
        if max_length is not None and (not isinstance(max_length, int) or max_length <= 0):
            raise ConfigurationError(f"max_length must be a positive integer, got {max_length!r}")
        return TextPreprocess(tokenizer=tokenizer, max_length=max_length or default)

    def _image_preprocess(self, weights_dir: str | None, source: str, local_source: bool) -> ImagePreprocess:
        from transformers import AutoImageProcessor

        src = weights_dir or source
        proc = _load("image processor", src, local_source, lambda: AutoImageProcessor.from_pretrained(src))
        self._image_processor = proc
        size = _size_of(getattr(proc, "size", None))
        crop = _size_of(getattr(proc, "crop_size", None)) if getattr(proc, "do_center_crop", False) else None
        if size is None:
            raise ConfigurationError(f"cannot read the input size from the image processor of {src!r}: {proc!r}")
        side = crop or size
        resample = getattr(proc, "resample", 2)
        interp = _RESAMPLE.get(int(getattr(resample, "value", resample)) if not isinstance(resample, str) else -1)
        if interp is None:
            interp = str(getattr(resample, "name", resample)).lower()
            interp = interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear"
        return ImagePreprocess(
            input_size=(int(getattr(self.config, "num_channels", 3)), side, side),
            mean=tuple(float(m) for m in proc.image_mean),
            std=tuple(float(s) for s in proc.image_std),
            interpolation=interp,  # type: ignore[arg-type]
            crop_pct=(crop / size) if crop else 1.0,
        )

    def rebuild_spec(self) -> dict[str, Any]:
        """Config and tokenizer / image processor files, so a checkpoint rebuilds this backbone offline."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.config.save_pretrained(tmp)
            if self.modality == "text":
                self.preprocess.tokenizer.save_pretrained(tmp)
            else:
                self._image_processor.save_pretrained(tmp)
            files = {
                str(p.relative_to(tmp)): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()
            }
        kwargs: dict[str, Any] = {"pooling": self.pooling}
        if self.modality == "text":
            kwargs["max_length"] = int(self.preprocess.max_length)
        return {"files": files, "name": "hf:{folder}", "kwargs": kwargs}

    def _build_layer_groups(self) -> list[LayerGroup]:
        spec = hf_layer_spec(self.model)
        assert spec is not None
        return build_layer_groups(self.model, spec, prefix="model")

    def forward_features(self, x: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Pooled features ``(batch, hidden_size)`` from token tensors or pixels."""
        if isinstance(x, Tensor):
            if self.modality == "text":
                x = {"input_ids": x}
            else:
                x = {"pixel_values": x}
        elif not isinstance(x, Mapping):
            raise ConfigurationError(
                f"{type(self).__name__} takes a mapping of tensors (the output of self.preprocess(texts)) "
                f"or a pixel tensor, got {type(x).__name__}"
            )
        inputs = {k: v for k, v in x.items() if k in self._forward_args}
        hidden = self.model(**inputs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = x.get("attention_mask")
        if mask is None:
            return hidden.mean(dim=1)
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pooling={self.pooling!r}"


def hf_layer_spec(model: nn.Module) -> LayerSpec | None:
    """The layer spec of a transformers ``PreTrainedModel`` (``None`` for anything else).

    Groups: the layers are the elements of the largest ``nn.ModuleList`` (by parameter count):
    ``encoder.layer`` (BERT, RoBERTa), ``transformer.layer`` (DistilBERT), ``layers`` (ViT in
    transformers 5). Parameters before the first layer form ``embeddings``; those after the
    last layer form one group per top-level child (``pooler``, ``layernorm``, a task head
    ``classifier``), named at the depth of the layer list's parent (``bert.pooler``).
    Head: whatever a task model holds outside its base model (``classifier``, ``score``,
    ``pre_classifier``...). No weight decay: 1-d tensors (biases, LayerNorm), as in the
    transformers Trainer. Adapter targets: the query / key / value projections inside the
    layers (:data:`HF_ATTENTION_PROJECTIONS`). A model without any ``nn.ModuleList`` is grouped
    by children.
    """
    if "transformers" not in sys.modules:
        return None
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return None
    base_prefix = getattr(model, "base_model_prefix", "")
    head = [
        name
        for name, child in model.named_children()
        if base_prefix and getattr(model, base_prefix, None) is not None and name != base_prefix
        and any(True for _ in child.parameters())
    ]
    best, best_n = None, 0
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            n = sum(p.numel() for p in mod.parameters())
            if n > best_n:
                best, best_n = mname, n
    if best is None:
        fallback = spec_by_children(model)
        return LayerSpec(fallback.groups, head=head, notes=fallback.notes)
    names = [n for n, _ in model.named_parameters()]
    layer_of = {n: n[len(best) + 1 :].split(".")[0] for n in names if n.startswith(best + ".")}
    first = next(i for i, n in enumerate(names) if n in layer_of)
    named: list[tuple[str | None, list[str]]] = []
    before = names[:first]
    if before:
        named.append(("embeddings", before))
    layers: dict[str, list[str]] = {}
    for n in names:
        if n in layer_of:
            layers.setdefault(f"{best}.{layer_of[n]}", []).append(n)
    named.extend(layers.items())
    after: dict[str, list[str]] = {}
    for n in names[first:]:
        if n not in layer_of:
            after.setdefault(n.split(".")[0], []).append(n)
    # name after-groups at the depth of the layer list's parent: "pooler", "bert.pooler", "classifier"
    depth = max(1, len(best.split(".")) - 1)
    for pns in after.values():
        full = group_name_from_params(pns, len(named))
        named.append((".".join(full.split(".")[:depth]), pns))
    targets = [
        n
        for n, m in model.named_modules()
        if n.startswith(best + ".") and isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in HF_ATTENTION_PROJECTIONS
    ]
    return LayerSpec(named, head=head, adapter_targets=targets)


#: How transformers encoders name the query / key / value projections of their attention layers
#: (BERT, RoBERTa, ViT, ...: ``query`` / ``key`` / ``value``; DistilBERT: ``q_lin`` ...; others
#: ``q_proj`` ...): the default LoRA targets. The output projection is left out: its name
#: (``attention.output.dense``) is shared with the feed-forward output.
HF_ATTENTION_PROJECTIONS = frozenset({"query", "key", "value", "q_lin", "k_lin", "v_lin", "q_proj", "k_proj", "v_proj"})


def _is_local_source(source: str) -> bool:
    """A local folder (existing, or spelled like a path) rather than a hub id ``org/name``."""
    return (
        os.path.isdir(os.path.expanduser(source))
        or source.startswith(("/", "./", "../", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
    )


def _auto_config(src: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(src)


def _model_class(config: Any, source: str) -> type[nn.Module]:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)]
    except KeyError as err:
        raise UnknownNameError(
            f"hf backbone {source!r} has model type {getattr(config, 'model_type', '?')!r}, which AutoModel "
            "cannot build. Use an encoder model (BERT, RoBERTa, DistilBERT, MiniLM, ViT, ...)."
        ) from err


def _quiet_from_pretrained(model_cls: Any, src: str, init_kwargs: dict[str, Any]) -> Any:
    """``from_pretrained`` with the load report silenced: missing keys are checked by the caller,
    and the unused pooler / pretraining-head keys it lists are expected."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return model_cls.from_pretrained(src, output_loading_info=True, **init_kwargs)
    finally:
        hf_logging.set_verbosity(level)


def _has_tokenizer(folder: str) -> bool:
    return any((Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def _load(what: str, src: str, local: bool, fn: Any) -> Any:
    """Run a transformers loader; turn hub / file failures into WeightsUnavailableError with the fix."""
    try:
        return fn()
    except (OSError, ValueError, EnvironmentError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        where = (
            f"local folder {src!r}"
            if local
            else f"hub id {src!r}" + (" (HF_HUB_OFFLINE is set and it is not in the cache)" if offline else "")
        )
        raise WeightsUnavailableError(
            f"could not load the {what} of hf backbone from {where}: {type(err).__name__}: {err}\n"
            "Fix: pass a local folder saved with `save_pretrained` ('hf:/path/to/folder'), fill the Hugging "
            "Face cache on a machine with network (then HF_HUB_OFFLINE=1 finds it), or pass pretrained=False "
            "for random init (which still needs the config and tokenizer)."
        ) from err


def _size_of(size: Any) -> int | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size
    get = size.get if isinstance(size, Mapping) else lambda k, d=None: getattr(size, k, d)
    for key in ("height", "shortest_edge"):
        v = get(key, None)
        if v:
            return int(v)
    return None


@register_family(
    "hf",
    list_names=None,
    description="Hugging Face transformers encoders (hub id or local folder)",
    layer_spec=hf_layer_spec,
)
def _create_hf(source: str, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> HFBackbone:
    return HFBackbone(source, pretrained=pretrained, weights=weights, **kwargs)

