"""Tokenized text batches against the model's :class:`~tl_lightning.backbones.TextPreprocess`.

A batch is ``input_ids`` (and ``attention_mask``) only: the tokenizer that made it is not in it.
What a foreign tokenizer leaves behind is checked instead: ids beyond the model's embedding
rows (an index error in the forward), ids beyond the model tokenizer's vocabulary, sequences
that do not start with the special token the model's tokenizer puts first (``[CLS]``, ``<s>``),
padding with another id than the model's pad token; plus the share of unknown tokens and of
sequences cut at ``max_length``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tl_lightning.backbones._base import TextPreprocess
from tl_lightning.diagnostics._finding import Finding
from tl_lightning.errors import DataError

__all__ = ["TextStats", "TokenizerFacts", "embedding_rows", "position_limit", "text_findings"]

# tokenizers without a known limit report transformers' VERY_LARGE_INTEGER (1e30)
_NO_LIMIT = 10**9


def embedding_rows(module: nn.Module) -> int | None:
    """Rows of the model's input (token) embedding: ``get_input_embeddings()`` of a Hugging Face
    model inside ``module``, else the first ``nn.Embedding``."""
    for m in module.modules():
        getter = getattr(m, "get_input_embeddings", None)
        if callable(getter) and m is not module:
            try:
                emb = getter()
            except (NotImplementedError, AttributeError):
                continue
            if isinstance(emb, nn.Embedding):
                return int(emb.num_embeddings)
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            return int(m.num_embeddings)
    return None


def position_limit(module: nn.Module, tokenizer: Any) -> int | None:
    """The most tokens the model takes: its config's ``max_position_embeddings`` / the tokenizer's limit."""
    limits: list[int] = []
    for m in module.modules():
        config = getattr(m, "config", None)
        value = getattr(config, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < _NO_LIMIT:
        limits.append(model_max)
    return min(limits) if limits else None


@dataclass(frozen=True)
class TokenizerFacts:
    """What the model's tokenizer puts into every sequence."""

    vocab: int
    first: int | None  # special token it starts sequences with ([CLS], <s>)
    pad: int | None
    unk: int | None
    name: str

    @classmethod
    def of(cls, tokenizer: Any) -> TokenizerFacts:
        with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
        first = with_special[0] if len(with_special) > len(plain) and with_special[:1] != plain[:1] else None
        # ids run up to the largest in the vocabulary (len() counts unique tokens: a duplicated line leaves a gap)
        vocab = tokenizer.get_vocab() if callable(getattr(tokenizer, "get_vocab", None)) else {}
        return cls(
            vocab=max(vocab.values()) + 1 if vocab else len(tokenizer),
            first=first,
            pad=getattr(tokenizer, "pad_token_id", None),
            unk=getattr(tokenizer, "unk_token_id", None),
            name=str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        )

    def token(self, tokenizer: Any, token_id: int | None) -> str:
        if token_id is None:
            return "-"
        try:
            return f"{tokenizer.convert_ids_to_tokens(int(token_id))!s} (id {token_id})"
        except (IndexError, KeyError, TypeError, ValueError, OverflowError):
            return f"id {token_id}"


@dataclass
class TextStats:
    """Running counts over tokenized batches."""

    sequences: int = 0
    tokens: int = 0
    unknown: int = 0
    truncated: int = 0
    first_expected: int = 0
    pad_positions: int = 0
    pad_other: int = 0
    beyond_vocab: int = 0
    max_id: int = -1
    width: int = 0
    first_ids: Counter = field(default_factory=Counter)
    pad_ids: Counter = field(default_factory=Counter)

    def update(
        self, inputs: Tensor | Mapping[str, Tensor], facts: TokenizerFacts, max_length: int, rows: int | None
    ) -> None:
        """Add one batch; raises a :class:`DataError` on ids beyond the model's embedding rows."""
        if isinstance(inputs, Tensor):
            ids, mask = inputs, None
        else:
            ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        ids = ids.detach().long()
        if ids.ndim == 1:
            ids = ids[None]
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.detach().bool()
        lengths = mask.sum(1)
        # first attended position (left or right padding alike)
        first_pos = mask.long().argmax(1)
        first = ids.gather(1, first_pos[:, None])[:, 0]
        pads = ids[~mask]
        values = torch.stack(
            [
                ids.amax() if ids.numel() else ids.new_tensor(-1),
                mask.sum(),
                ((ids == facts.unk) & mask).sum() if facts.unk is not None else ids.new_zeros(()),
                (lengths >= max_length).sum(),
                (ids >= facts.vocab).sum(),
            ]
        ).cpu()
        max_id = int(values[0])
        if rows is not None and max_id >= rows:
            raise DataError(
                f"token id {max_id} is beyond the model's {rows} embedding rows (valid ids 0..{rows - 1}): the texts "
                f"were tokenized by another model's tokenizer, not {facts.name!r}. Fix: tokenize with the model's "
                "tokenizer (model.preprocess / the backbone's TextPreprocess; tl_lightning's data modules do)"
            )
        self.max_id = max(self.max_id, max_id)
        self.tokens += int(values[1])
        self.unknown += int(values[2])
        self.truncated += int(values[3])
        self.beyond_vocab += int(values[4])
        self.sequences += int(ids.shape[0])
        self.width = max(self.width, int(ids.shape[1]))
        self.first_ids.update(first.cpu().tolist())
        if facts.first is not None:
            self.first_expected += int((first == facts.first).sum())
        self.pad_positions += int(pads.numel())
        if pads.numel():
            self.pad_ids.update(pads.cpu().tolist())
            if facts.pad is not None:
                self.pad_other += int((pads != facts.pad).sum())


def _top(counter: Counter, tokenizer: Any, facts: TokenizerFacts) -> str:
    return ", ".join(f"{facts.token(tokenizer, i)} x{n}" for i, n in counter.most_common(3))


def text_findings(
    stats: TextStats,
    p: TextPreprocess,
    facts: TokenizerFacts,
    rows: int | None,
    limit: int | None,
    ignore: set[str],
    unk_threshold: float,
    truncation_threshold: float,
) -> list[Finding]:
    """Every finding about the text batches seen so far (checks named in ``ignore`` skipped)."""
    found: list[Finding] = []
    tok = p.tokenizer
    if "tokenizer" not in ignore:
        signs: list[str] = []
        if rows is not None and facts.vocab > rows:
            signs.append(
                f"the tokenizer {facts.name!r} has {facts.vocab} tokens but the model's embedding only {rows} rows"
            )
        if stats.beyond_vocab:
            signs.append(
                f"{stats.beyond_vocab} token id(s) are beyond the {facts.vocab} tokens of {facts.name!r} "
                f"(largest {stats.max_id})"
            )
        if facts.first is not None and stats.sequences and stats.first_expected < 0.5 * stats.sequences:
            signs.append(
                f"{stats.sequences - stats.first_expected} of {stats.sequences} sequences do not start with "
                f"{facts.token(tok, facts.first)} as the model's tokenizer makes them (they start with "
                f"{_top(stats.first_ids, tok, facts)})"
            )
        if facts.pad is not None and stats.pad_positions and stats.pad_other > 0.5 * stats.pad_positions:
            signs.append(
                f"padding uses {_top(stats.pad_ids, tok, facts)} instead of {facts.token(tok, facts.pad)}"
            )
        if signs:
            found.append(
                Finding(
                    "tokenizer",
                    "the token ids do not look like the output of the model's tokenizer: "
                    + "; ".join(signs)
                    + ". Likely cause: the texts were tokenized by another model's tokenizer (or without special "
                    "tokens), so every id means another word to the model. Fix: tokenize with the model's tokenizer "
                    "(model.preprocess / the backbone's TextPreprocess; tl_lightning's data modules do)",
                )
            )
    if "unknown_tokens" not in ignore and facts.unk is not None and stats.tokens:
        share = stats.unknown / stats.tokens
        if share > unk_threshold:
            found.append(
                Finding(
                    "unknown_tokens",
                    f"{100 * share:.1f}% of the tokens are {facts.token(tok, facts.unk)} (threshold "
                    f"{100 * unk_threshold:.0f}%): the vocabulary of {facts.name!r} does not cover these texts. Likely "
                    "cause: another language or script than the model was pretrained on, emoji / symbols, or a "
                    "tokenizer of another model. Fix: a model pretrained on such text (a multilingual one), or clean "
                    "the texts",
                )
            )
    if "truncation" not in ignore and stats.sequences:
        share = stats.truncated / stats.sequences
        if share > truncation_threshold:
            if limit is not None and p.max_length >= limit:
                advice = (
                    f"the model takes at most {limit} tokens, so longer texts are always cut: keep the most useful part "
                    "(e.g. head + tail of each text) or split long texts into chunks"
                )
            else:
                suggestion = 2 * p.max_length if limit is None else min(2 * p.max_length, limit)
                advice = (
                    f"raise max_length, e.g. to {suggestion} (data.max_length={suggestion} with tl-train"
                    + (f"; the model takes up to {limit}" if limit is not None else "")
                    + "), at the cost of memory and time"
                )
            found.append(
                Finding(
                    "truncation",
                    f"{100 * share:.0f}% of the sequences fill max_length={p.max_length} tokens (threshold "
                    f"{100 * truncation_threshold:.0f}%) and were most likely cut: the end of those texts never "
                    f"reaches the model. Fix: {advice}",
                )
            )
    return found
