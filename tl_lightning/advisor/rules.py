"""The rule table of ``finetune=auto``: the seed's table (data size x domain similarity) plus measured overrides.

The seed (``shared/SEED-transfer-learning.txt``) gives four cells:

=====================  ===============  =====================================================
target data            domain           strategy
=====================  ===============  =====================================================
small (< 1K)           similar          feature extraction
small (< 1K)           different        feature extraction from lower layers
large (> 10K)          similar          fine-tune all with a small LR
large (> 10K)          different        fine-tune all, larger LR for upper layers
=====================  ===============  =====================================================

Here every input is measured (:class:`~tl_lightning.advisor.Measurements`) and every cell is a
``finetune=`` option. The rules are tried in order; the first that applies decides:

====  =========================  ==================================================  ==================
rule  when                       strategy                                            from
====  =========================  ==================================================  ==================
R0    no pretrained weights      ``scratch``                                         nothing to transfer
R1    gain < ``min_gain``        ``scratch``: frozen pretrained features classify    measured override
      and LogME not above        no better than random-init ones of the same
      the random-init one        architecture (negative transfer risk); the probe
                                 alone is noisy on a small validation split, so a
                                 pretrained LogME above the random one vetoes R1
R2    kappa >= ``solved_kappa``  ``feature_extraction``: the frozen features         measured override
                                 already solve the task; training more cannot
                                 gain much
R3    small, similar             ``feature_extraction``                              seed row 1
R3b   small, similar, kappa <    ``lp_ft``: the frozen features leave much of the    measured override
      ``headroom_kappa``, model  task unsolved; LP-FT starts from the probe's
      not large for the data     head and adapts every layer at a small LR
R4b   small, different, kappa    ``lp_ft`` (``feature_extraction`` when the model   measured override
      >= ``headroom_kappa``      is large for the data): the seed's row 2 assumes
                                 the top-level features do not transfer, but the
                                 probe measured that they do (EfficientNet-Lite0 on
                                 800 digits: feature extraction and LP-FT 0.907,
                                 top_n 0.867, BENCHMARKS.md)
R4    small, different           ``top_n``: the lower layers stay frozen (generic    seed row 2
                                 features), the top groups are re-learned: the
                                 closest option to "features from lower layers"
R5    large, similar             ``full`` (small LR)                                 seed row 3
R6    large, different           ``llrd``: everything trains, upper layers at a      seed row 4
                                 larger LR than lower ones
R7    medium, similar            ``full``; ``l2sp`` when the backbone is large for   extension (the seed
                                 the data (params / example >= ``large_model``):     has no medium row)
                                 everything trains, pulled towards the pretrained
                                 weights
R8    medium, different          ``llrd``                                            extension
====  =========================  ==================================================  ==================

Data size is examples per class (``small`` below ``small_per_class`` = 100, ``large`` from
``large_per_class`` = 1,000): the seed's totals (1K, 10K) read as a 10-class problem; a 1,000
example binary task has 500 per class and behaves like a medium one, not a small one
(``tl-train experiment=demo``: full fine-tuning 0.777 vs feature extraction 0.690, BENCHMARKS.md).

Domain similarity is decided by the first measure available:

1. BatchNorm-statistics shift (image CNNs) <= ``similar_shift`` (0.15). Calibrated on
   EfficientNet-Lite0/1/2 ImageNet weights (``bench`` notes in BENCHMARKS.md): crops of natural
   photos 0.02 at the pretraining size and 0.12-0.13 at 64 px; MNIST digits 0.26-0.28 at the
   pretraining size and 0.36-0.40 at 64 px.
2. Tokenizer fertility (text): <= ``similar_tokens_per_word`` (1.5) subword tokens per word and
   <= ``similar_unknown_rate`` (1%) unknown tokens (English prose with a BERT WordPiece
   vocabulary: about 1.1-1.3).
3. Otherwise the probe gain over random-init features >= ``similar_gain`` (0.3), else the probe's
   kappa >= ``headroom_kappa``.

Every threshold is a field of :class:`RuleThresholds` (``finetune.rules.<name>=...`` in
``tl-train``). Each rule also names a shortlist of strategies worth racing
(``finetune.search=true`` races them, chosen one first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from tl_lightning._checks import check_number
from tl_lightning.advisor.measurements import Measurements
from tl_lightning.errors import ConfigurationError, did_you_mean

__all__ = ["STRATEGIES", "Decision", "RuleThresholds", "choose_strategy"]

#: every strategy the rules can pick (``finetune=`` options)
STRATEGIES = ("feature_extraction", "lp_ft", "top_n", "full", "llrd", "l2sp", "scratch")


@dataclass(frozen=True)
class RuleThresholds:
    """The numbers the rule table compares measurements with (see the module docstring)."""

    small_per_class: float = 100.0
    large_per_class: float = 1000.0
    solved_kappa: float = 0.95
    headroom_kappa: float = 0.6
    min_gain: float = 0.05
    similar_gain: float = 0.3
    similar_shift: float = 0.15
    similar_tokens_per_word: float = 1.5
    similar_unknown_rate: float = 0.01
    large_model: float = 100_000.0

    def __post_init__(self) -> None:
        for f in fields(self):
            check_number(f"finetune.rules.{f.name}", getattr(self, f.name))
        if self.small_per_class >= self.large_per_class:
            raise ConfigurationError(
                f"finetune.rules.small_per_class ({self.small_per_class:g}) must be below large_per_class "
                f"({self.large_per_class:g})"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> RuleThresholds:
        """Thresholds from a config mapping; an unknown key is an error naming the known ones."""
        values = dict(values or {})
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise ConfigurationError(
                    f"unknown rule threshold finetune.rules.{key}{did_you_mean(str(key), known)} Known: {known}"
                )
        return cls(**{k: float(v) for k, v in values.items()})


@dataclass(frozen=True)
class Decision:
    """What :func:`choose_strategy` picked, by which rule, and why.

    Attributes:
        strategy: The ``finetune=`` option.
        rule: The rule's id (``"R7"``) and name.
        origin: ``"seed table"``, ``"measured override"`` or ``"extension"``.
        reason: One sentence with the numbers that decided.
        similarity: How the domain was judged (the measure, its value and the threshold).
        shortlist: Strategies worth racing (``search=true``), the chosen one first.
        measurements: The inputs.
        thresholds: The thresholds used.
    """

    strategy: str
    rule: str
    origin: str
    reason: str
    similarity: str
    shortlist: tuple[str, ...]
    measurements: Measurements
    thresholds: RuleThresholds

    def to_json(self) -> dict[str, Any]:
        """The decision, its inputs and thresholds as a plain dict."""
        return {
            "strategy": self.strategy,
            "rule": self.rule,
            "origin": self.origin,
            "reason": self.reason,
            "similarity": self.similarity,
            "shortlist": list(self.shortlist),
            "measurements": self.measurements.to_json(),
            "thresholds": asdict(self.thresholds),
        }

    def format(self) -> str:
        """The lines ``finetune=auto`` prints: the numbers, then the rule and the choice."""
        m = self.measurements
        lines = ["finetune=auto measured:"]
        lines.append(
            f"  data: {m.n_train} training examples, {m.num_classes} classes, {m.examples_per_class:.0f} per class "
            f"(smallest class {m.min_class_count})"
        )
        lines.append(
            f"  backbone: {m.backbone_params / 1e6:.2f}M parameters, {m.params_per_example:,.0f} per training example"
            + ("" if m.pretrained else " (random init: no pretrained weights)")
        )
        if m.probe_accuracy is not None:
            kappa = m.probe_kappa
            lines.append(
                f"  linear probe on frozen features: accuracy {m.probe_accuracy:.3f} on {m.probe_val_samples} "
                f"samples (majority class {m.chance_accuracy:.3f}"
                + (f"; kappa {kappa:.2f})" if kappa is not None else ")")
                + (f", LogME {m.logme:.3f}" if m.logme is not None else "")
            )
        if m.random_probe_accuracy is not None:
            gain = m.relative_gain
            lines.append(
                f"  same architecture, random init: probe accuracy {m.random_probe_accuracy:.3f}"
                + (f", LogME {m.random_logme:.3f}" if m.random_logme is not None else "")
                + (
                    f"; pretraining closes {gain:.2f} of the gap to 1.0"
                    if gain is not None
                    else "; random features already reach 1.0 (no gain to measure)"
                )
            )
        if m.shift is not None:
            lines.append(f"  BatchNorm-statistics shift from the pretraining data: {m.shift:.3f}")
        if m.tokens_per_word is not None:
            lines.append(
                f"  tokenizer: {m.tokens_per_word:.2f} tokens per word, {100 * (m.unknown_rate or 0):.2f}% unknown"
            )
        lines.append(f"  domain: {self.similarity}")
        lines.append(f"rule {self.rule} ({self.origin}): {self.reason}")
        lines.append(f"-> finetune={self.strategy}")
        return "\n".join(lines)


def _similarity(m: Measurements, t: RuleThresholds) -> tuple[bool, str]:
    if m.shift is not None:
        similar = m.shift <= t.similar_shift
        return similar, (
            f"{'similar' if similar else 'different'} (BatchNorm-statistics shift {m.shift:.3f} "
            f"{'<=' if similar else '>'} {t.similar_shift:g})"
        )
    if m.tokens_per_word is not None:
        unknown = m.unknown_rate or 0.0
        similar = m.tokens_per_word <= t.similar_tokens_per_word and unknown <= t.similar_unknown_rate
        return similar, (
            f"{'similar' if similar else 'different'} (tokenizer: {m.tokens_per_word:.2f} tokens per word vs "
            f"{t.similar_tokens_per_word:g}, {100 * unknown:.2f}% unknown vs {100 * t.similar_unknown_rate:g}%)"
        )
    gain = m.relative_gain
    if gain is not None:
        similar = gain >= t.similar_gain
        return similar, (
            f"{'similar' if similar else 'different'} (probe gain over random init {gain:.2f} "
            f"{'>=' if similar else '<'} {t.similar_gain:g}; no BatchNorm or tokenizer statistics)"
        )
    kappa = m.probe_kappa
    if kappa is not None:
        similar = kappa >= t.headroom_kappa
        return similar, (
            f"{'similar' if similar else 'different'} (probe kappa {kappa:.2f} {'>=' if similar else '<'} "
            f"{t.headroom_kappa:g}; no shift statistics and no random-init reference)"
        )
    return True, "unknown (nothing measured); read as similar"


def choose_strategy(measurements: Measurements, thresholds: RuleThresholds | None = None) -> Decision:
    """Pick a ``finetune=`` strategy from measurements by the rule table (see the module docstring).

    Example:
        >>> m = Measurements(n_train=1000, num_classes=2, min_class_count=500, backbone_params=22_700_000,
        ...                  probe_accuracy=0.69, chance_accuracy=0.5, random_probe_accuracy=0.58,
        ...                  tokens_per_word=1.2, unknown_rate=0.0)
        >>> d = choose_strategy(m)
        >>> d.strategy, d.rule
        ('full', 'R7 medium-similar')
    """
    t = thresholds or RuleThresholds()
    m = measurements
    similar, similarity = _similarity(m, t)

    def decide(strategy: str, rule: str, origin: str, reason: str, shortlist: tuple[str, ...]) -> Decision:
        ordered = (strategy, *(s for s in shortlist if s != strategy))
        return Decision(strategy, rule, origin, reason, similarity, ordered, m, t)

    per_class = m.examples_per_class
    size = (
        "small" if per_class < t.small_per_class else "large" if per_class >= t.large_per_class else "medium"
    )
    size_text = f"{per_class:.0f} examples per class ({size}: small < {t.small_per_class:g}, large >= {t.large_per_class:g})"
    kappa, gain = m.probe_kappa, m.relative_gain
    large_model = m.params_per_example >= t.large_model

    if not m.pretrained:
        return decide(
            "scratch",
            "R0 no-pretrained-weights",
            "nothing to transfer",
            "the backbone has no pretrained weights (backbone.pretrained=false)",
            ("scratch",),
        )
    # LogME is the second, independent witness: a probe on a few validation samples is noisy, and
    # LogME (the evidence on every training sample) clearly above the random-init one vetoes R1
    logme_agrees = m.logme is None or m.random_logme is None or m.logme <= m.random_logme
    if gain is not None and gain < t.min_gain and logme_agrees:
        logme_text = (
            f" and LogME agrees ({m.logme:.3f} vs {m.random_logme:.3f})"
            if m.logme is not None and m.random_logme is not None
            else ""
        )
        return decide(
            "scratch",
            "R1 no-transfer",
            "measured override",
            f"frozen pretrained features classify no better than random-init ones of the same architecture "
            f"(probe {m.probe_accuracy:.3f} vs {m.random_probe_accuracy:.3f}: gain {gain:.2f} < {t.min_gain:g}"
            f"{logme_text}); the pretraining carries nothing measurable for this task, so pretrained strategies "
            "risk negative transfer",
            ("scratch", "full", "llrd"),
        )
    if kappa is not None and kappa >= t.solved_kappa:
        return decide(
            "feature_extraction",
            "R2 solved-by-frozen-features",
            "measured override",
            f"the frozen features already solve the task (probe kappa {kappa:.2f} >= {t.solved_kappa:g}, accuracy "
            f"{m.probe_accuracy:.3f}); training the backbone has little left to gain, whatever the data size",
            ("feature_extraction", "lp_ft", "top_n"),
        )
    if size == "small":
        if not similar and kappa is not None and kappa >= t.headroom_kappa:
            # the seed's row 2 assumes the top-level features do not transfer to a different domain;
            # here they were measured to solve most of the task already
            strategy = "feature_extraction" if large_model else "lp_ft"
            return decide(
                strategy,
                "R4b small-different-probe-transfers",
                "measured override",
                f"{size_text}, different domain, where the seed says features from lower layers; but the frozen "
                f"top-level features already solve {kappa:.2f} of the task (kappa >= {t.headroom_kappa:g}), so they do "
                "transfer: "
                + (
                    f"the backbone is large for the data ({m.params_per_example:,.0f} params per example >= "
                    f"{t.large_model:,.0f}), so train the head on them"
                    if large_model
                    else "LP-FT keeps the probe's head (and the pretrained BatchNorm statistics) and adapts every layer "
                    "at a small LR"
                ),
                (strategy, "feature_extraction", "top_n", "lp_ft"),
            )
        if not similar:
            return decide(
                "top_n",
                "R4 small-different",
                "seed table",
                f"{size_text}, different domain: keep the lower (generic) layers frozen and re-learn the top groups, "
                "the closest option to the seed's 'feature extraction from lower layers'",
                ("top_n", "lp_ft", "feature_extraction", "llrd"),
            )
        if kappa is not None and kappa < t.headroom_kappa and not large_model:
            return decide(
                "lp_ft",
                "R3b small-similar-headroom",
                "measured override",
                f"{size_text}, similar domain, where the seed says feature extraction; but the frozen features "
                f"solve only {kappa:.2f} of the task (kappa < {t.headroom_kappa:g}) and the backbone is not large for "
                f"the data ({m.params_per_example:,.0f} params per example < {t.large_model:,.0f}): LP-FT keeps the "
                "probe's head and adapts every layer at a small LR",
                ("lp_ft", "feature_extraction", "top_n", "l2sp"),
            )
        return decide(
            "feature_extraction",
            "R3 small-similar",
            "seed table",
            f"{size_text}, similar domain: train the head on frozen features",
            ("feature_extraction", "lp_ft", "top_n", "l2sp"),
        )
    if size == "large":
        if similar:
            return decide(
                "full",
                "R5 large-similar",
                "seed table",
                f"{size_text}, similar domain: fine-tune everything at a small LR",
                ("full", "lp_ft", "llrd"),
            )
        return decide(
            "llrd",
            "R6 large-different",
            "seed table",
            f"{size_text}, different domain: fine-tune everything, upper layers at a larger LR (layer-wise decay)",
            ("llrd", "full", "lp_ft"),
        )
    if similar:
        if large_model:
            return decide(
                "l2sp",
                "R7 medium-similar",
                "extension",
                f"{size_text}, similar domain, and a backbone large for the data ({m.params_per_example:,.0f} params "
                f"per example >= {t.large_model:,.0f}): fine-tune everything, pulled towards the pretrained weights",
                ("l2sp", "lp_ft", "full", "feature_extraction"),
            )
        return decide(
            "full",
            "R7 medium-similar",
            "extension",
            f"{size_text}, similar domain: fine-tune everything at a small LR, as the seed does for large data "
            f"(the backbone has {m.params_per_example:,.0f} params per example < {t.large_model:,.0f})",
            ("full", "lp_ft", "llrd", "l2sp"),
        )
    return decide(
        "llrd",
        "R8 medium-different",
        "extension",
        f"{size_text}, different domain: fine-tune everything, upper layers at a larger LR, as the seed does for "
        "large data",
        ("llrd", "full", "lp_ft", "top_n"),
    )
