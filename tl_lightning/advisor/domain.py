"""How far is the target data from what the backbone was pretrained on? Measured without the source data.

The pretraining data is not at hand (ImageNet, the web text of a language model), but the
backbone carries traces of it that can be compared with the target inputs:

* **BatchNorm statistics** (image CNNs): every BatchNorm layer stores the running mean and
  variance of its input channels over the pretraining data. :func:`batchnorm_shift` runs a
  sample of target inputs through the frozen network (eval mode: each layer normalised with the
  source statistics, exactly as feature extraction sees the data), records the mean and
  variance of each BatchNorm layer's input channels, and measures per channel the Kullback-Leibler
  divergence ``KL(N(mu_t, var_t) || N(mu_s, var_s))`` of the target Gaussian from the source one
  (Li et al., "Revisiting Batch Normalization for Practical Domain Adaptation", 2016, use the
  same statistics to adapt a network to a new domain). The median over a layer's channels (a
  dead channel on the target, whose variance is ~0, would otherwise dominate) is averaged over
  layers. 0: target activations look like the source's; the number grows with the shift.
* **Tokenizer fertility** (text): :func:`tokenizer_fertility` counts the subword tokens per
  whitespace word and the unknown-token rate of the backbone's own tokenizer on target texts.
  A vocabulary learned on the pretraining text splits text of the same kind into few pieces
  (English prose with BERT's WordPiece: about 1.1-1.3 per word); text of another kind (code,
  DNA, another script, heavy jargon) falls apart into many pieces or unknown tokens.

Backbones with neither (a ViT: LayerNorm only; an image model read through a Hugging Face
image processor) get ``None``; :mod:`tl_lightning.advisor.rules` then judges similarity by the
probe gain over random-init features alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tl_lightning._checks import check_int
from tl_lightning.errors import DataError
from tl_lightning.freezing import eval_mode

__all__ = ["BatchNormShift", "TokenizerFertility", "batchnorm_shift", "gaussian_kl", "tokenizer_fertility"]


def gaussian_kl(mu_t: Tensor, var_t: Tensor, mu_s: Tensor, var_s: Tensor) -> Tensor:
    """Per-channel ``KL(N(mu_t, var_t) || N(mu_s, var_s))`` (variances must be positive).

    Example:
        >>> gaussian_kl(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0]))
        tensor([0.])
    """
    return 0.5 * (torch.log(var_s / var_t) + (var_t + (mu_t - mu_s) ** 2) / var_s - 1.0)


@dataclass(frozen=True)
class BatchNormShift:
    """Outcome of :func:`batchnorm_shift`.

    Attributes:
        shift: Mean over BatchNorm layers of the median per-channel KL divergence (see the
            module docstring); 0 when the target activations match the source statistics.
        per_layer: ``(layer name, median KL)`` input -> output.
        samples: Target samples measured.
    """

    shift: float
    per_layer: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    samples: int = 0


def _batchnorms(module: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]



def batchnorm_shift(
    backbone: nn.Module,
    batches: Iterable[Any],
    *,
    max_samples: int = 256,
    device: torch.device | str | None = None,
    forward: Any = None,
) -> BatchNormShift | None:
    """Distance of target activations from the pretraining statistics stored in BatchNorm layers.

    Args:
        backbone: The pretrained network (its BatchNorm layers hold the source statistics).
        batches: ``(inputs, targets)`` or input batches of target data (a feature loader).
        max_samples: Stop after this many samples (a few hundred suffice for channel means).
        device: Where inputs go (default: where the backbone's parameters are).
        forward: Callable run on each input batch (default: ``backbone``); e.g. a
            ``TransferClassifier.features``.

    Returns:
        The :class:`BatchNormShift`, or ``None`` when the backbone has no BatchNorm layer with
        running statistics.

    Raises:
        DataError: ``batches`` is empty.
    """
    max_samples = check_int("max_samples", max_samples, low=1)
    layers = _batchnorms(backbone)
    if not layers:
        return None
    if device is None:
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    stats: dict[str, list[Tensor]] = {name: [] for name, _ in layers}  # [sum, sum of squares, count]

    def hook(name: str) -> Any:
        def record(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().float()
            dims = [d for d in range(x.ndim) if d != 1]
            count = x.numel() / x.shape[1]
            entry = stats[name]
            if not entry:
                entry.extend([x.sum(dims).double(), (x * x).sum(dims).double(), torch.tensor(float(count))])
            else:
                entry[0] += x.sum(dims).double()
                entry[1] += (x * x).sum(dims).double()
                entry[2] += count

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers]
    seen = 0
    fn = forward or backbone
    try:
        with eval_mode(backbone), torch.inference_mode():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = move_data_to_device(x, device)
                fn(x)
                seen += len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
                if seen >= max_samples:
                    break
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise DataError("no target batches to measure the BatchNorm statistics shift on; the split is empty")

    per_layer: list[tuple[str, float]] = []
    for name, bn in layers:
        if not stats[name]:
            continue  # a branch the forward pass did not reach
        total, squares, count = stats[name]
        mu_t = total / count
        var_t = (squares / count - mu_t**2).clamp_min(0.0)
        eps = float(bn.eps)
        kl = gaussian_kl(
            mu_t,
            var_t + eps,
            bn.running_mean.detach().double().cpu(),
            bn.running_var.detach().double().cpu() + eps,
        )
        per_layer.append((name, float(kl.median())))
    shift = float(np.mean([v for _, v in per_layer])) if per_layer else math.nan
    return BatchNormShift(shift=shift, per_layer=tuple(per_layer), samples=seen)


@dataclass(frozen=True)
class TokenizerFertility:
    """Outcome of :func:`tokenizer_fertility`.

    Attributes:
        tokens_per_word: Subword tokens per whitespace-separated word (special tokens excluded).
        unknown_rate: Share of the tokens that are the unknown token.
        samples: Texts measured.
    """

    tokens_per_word: float
    unknown_rate: float
    samples: int


def tokenizer_fertility(
    tokenizer: Any, texts: Sequence[str], *, max_samples: int = 512
) -> TokenizerFertility:
    """Subword tokens per word and unknown-token rate of ``tokenizer`` on ``texts`` (the first ``max_samples``).

    Raises:
        DataError: No text with a word in it.

    Example:
        >>> class Spaces:  # a tokenizer that splits on spaces, with "[UNK]" for "zzz"
        ...     unk_token_id = 0
        ...     def __call__(self, texts, add_special_tokens=False):
        ...         return {"input_ids": [[0 if w == "zzz" else 1 for w in t.split()] for t in texts]}
        >>> tokenizer_fertility(Spaces(), ["a b zzz", "c"])
        TokenizerFertility(tokens_per_word=1.0, unknown_rate=0.25, samples=2)
    """
    max_samples = check_int("max_samples", max_samples, low=1)
    sample = [str(t) for t in list(texts)[:max_samples]]
    words = sum(len(t.split()) for t in sample)
    if words == 0:
        raise DataError("no words in the target texts to measure the tokenizer on")
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    tokens = sum(len(row) for row in ids)
    unk = getattr(tokenizer, "unk_token_id", None)
    unknown = sum(1 for row in ids for i in row if unk is not None and i == unk)
    return TokenizerFertility(
        tokens_per_word=tokens / words, unknown_rate=unknown / tokens if tokens else 0.0, samples=len(sample)
    )
