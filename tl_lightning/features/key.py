"""The cache key of frozen-backbone features: everything that changes them, and nothing else.

A split's features are reused only when every component of :class:`FeatureKey` is the same:

==============  ==============================================================================
``backbone``    the registry name (``"timm:tf_efficientnet_lite0"``)
``weights``     sha256 over the backbone's state dict (names, dtypes, shapes, bytes; buffers
                such as BatchNorm statistics included), see :func:`weights_digest`
``pooling``     how token / spatial features become one vector (``"cls"``, ``"mean"``, timm's
                ``global_pool``)
``inputs``      the eval transform (images: resize, crop, interpolation, mean / std) or the
                tokenizer (its whole serialised pipeline: vocabulary, normaliser, special tokens)
                and ``max_length`` (texts)
``data``        sha256 over the split's samples in order: image files' paths and contents, or
                the texts, see :func:`dataset_digest`
``labels``      the label names in class-index order and every sample's target
``precision``   the Trainer precision the features are computed in (``"32-true"``,
                ``"bf16-mixed"``)
==============  ==============================================================================

The device is not part of the key (CPU and GPU float32 features agree to float tolerance), and
neither is the number of processes (a DDP run's features equal a 1-process run's).

Costs, each paid once per run: the weight digest reads every backbone tensor once (sha256 runs
at about 1-2 GB/s on one core: ~0.02 s for EfficientNet-Lite0's 19 MB, ~0.1 s for ResNet-50's
100 MB, ~1 s for a ViT-L); the data digest reads every image file once (fast next to decoding
and a forward pass, which it replaces when the cache is reused).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl_lightning.errors import ConfigurationError, DataError

__all__ = ["FeatureKey", "dataset_digest", "inputs_fingerprint", "pooling_of", "weights_digest"]

#: bump when the stored layout or what goes into the key changes
CACHE_FORMAT = 1


@dataclass(frozen=True)
class FeatureKey:
    """The components that decide a split's frozen features (see the module docstring)."""

    backbone: str
    weights: str
    pooling: str
    inputs: str
    data: str
    labels: str
    precision: str

    def digest(self) -> str:
        """sha256 hex digest of every component (and the cache format)."""
        payload = json.dumps({"format": CACHE_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def differences(self, other: FeatureKey) -> list[str]:
        """Names of the components that differ from ``other``."""
        mine, theirs = asdict(self), asdict(other)
        return [k for k in mine if mine[k] != theirs[k]]


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def weights_digest(module: nn.Module) -> str:
    """sha256 over ``module.state_dict()``: every name, dtype, shape and value (buffers included).

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> weights_digest(a) == weights_digest(a), weights_digest(a) == weights_digest(b)
        (True, False)
    """
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(_tensor_bytes(tensor))
    return h.hexdigest()


def pooling_of(backbone: nn.Module) -> str:
    """How ``backbone`` pools its output into one vector, as text.

    The adapter's ``pooling`` (Hugging Face: ``"cls"`` / ``"mean"``), or the ``global_pool`` of
    the wrapped model (timm's ``SelectAdaptivePool2d`` pool type, e.g. ``"avg"``, ``"max"``).
    """
    pooling = getattr(backbone, "pooling", None)
    if isinstance(pooling, str):
        return pooling
    model = getattr(backbone, "model", backbone)
    pool = getattr(model, "global_pool", None)
    if isinstance(pool, str):
        return pool
    if isinstance(pool, nn.Module):
        kind = getattr(pool, "pool_type", None)
        return f"{type(pool).__name__}({kind})" if kind is not None else repr(pool)
    return "default"


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        spec = json.loads(backend.to_str())
        # the call-time truncation / padding state is set per call (max_length is keyed separately)
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        text = json.dumps(
            {"vocab": sorted(vocab.items()), "init": repr(sorted(getattr(tokenizer, "init_kwargs", {}).items()))},
            sort_keys=True,
            default=repr,
        )
    return f"{type(tokenizer).__name__}:{hashlib.sha256(text.encode()).hexdigest()}"


def inputs_fingerprint(preprocess: Any, transform: Any = None) -> str:
    """The input side of the key: the eval ``transform`` (images) or the tokenizer and ``max_length`` (texts).

    Args:
        preprocess: The data module's effective ``ImagePreprocess`` / ``TextPreprocess``.
        transform: The image transform the features are computed with (its ``repr`` lists every
            step and parameter).
    """
    if getattr(preprocess, "modality", None) == "text":
        return f"text:{_tokenizer_fingerprint(preprocess.tokenizer)}:max_length={preprocess.max_length}"
    return f"image:{preprocess!r}:{transform!r}"


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise DataError(f"cannot read {str(path)!r} to fingerprint it for the feature cache: {err}") from err
    return h.digest()


def _plain_target(target: Any) -> Any:
    if isinstance(target, torch.Tensor):
        return target.tolist()
    return target


def dataset_digest(dataset: Any) -> str:
    """sha256 over a split's samples, in order: what goes in (files or texts), not the labels.

    Image datasets (a ``samples`` list of ``(path, target)``) hash each file's path and content;
    text datasets (``texts``) hash each text.

    Raises:
        ConfigurationError: A dataset of another kind (nothing to fingerprint it by).
    """
    h = hashlib.sha256()
    samples = getattr(dataset, "samples", None)
    texts = getattr(dataset, "texts", None)
    if samples is not None:
        for path, _ in samples:
            h.update(str(path).encode() + b"\0")
            h.update(_file_digest(Path(path)))
    elif texts is not None:
        for text in texts:
            h.update(str(text).encode() + b"\0")
    else:
        raise ConfigurationError(
            f"cannot fingerprint a {type(dataset).__name__} for the feature cache: cached features need the "
            "datasets of ImageFolderDataModule / TextClassificationDataModule (a `samples` list of (path, target) "
            "or `texts`). Fix: use those data modules, or finetune.cached_features=false"
        )
    return h.hexdigest()


def labels_digest(labels: Sequence[str], targets: Sequence[Any]) -> str:
    """sha256 over the label names (class-index order) and every sample's target."""
    payload = json.dumps({"labels": list(labels), "targets": [_plain_target(t) for t in targets]})
    return hashlib.sha256(payload.encode()).hexdigest()


def dataset_targets(dataset: Any) -> list[Any]:
    """Every sample's target, in order, read from the dataset's lists (no decoding)."""
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return [t for _, t in samples]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return list(targets)
    raise ConfigurationError(f"cannot read the targets of a {type(dataset).__name__} for the feature cache")
