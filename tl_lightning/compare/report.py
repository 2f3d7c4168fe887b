"""The comparison's numbers and verdicts: spread over seeds, what is beyond noise, negative transfer, the pick.

:func:`build_report` turns the runs of a sweep (:class:`~tl_lightning.compare.runs.RunRecord`)
into a :class:`ComparisonReport`:

* per strategy, the metric's mean, standard deviation and min-max over the seeds that completed,
  the mean training time and the trainable parameters;
* every strategy against the from-scratch baseline and against the best strategy, by a paired
  t-test over the seeds both completed (:func:`~tl_lightning.compare._stats.paired_t_test`):
  ``better`` / ``worse`` when significant at ``alpha``, ``within noise`` when not, ``untested``
  with fewer than two common seeds;
* **negative transfer**: every pretrained strategy worse than the baseline beyond noise, named in
  a paragraph with the seed document's mitigations;
* **the pick**: among the best strategy and those within noise of it, the cheapest (mean training
  time, then trainable parameters), in one sentence with the numbers.

Rendering is separate: :meth:`ComparisonReport.to_markdown` (words and tables),
:meth:`ComparisonReport.to_dict` (plain data for ``report.json``) and
:func:`~tl_lightning.compare.plot.plot_report` (``report.png``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tl_lightning._checks import check_choice, check_number
from tl_lightning.compare._markdown import SEED_NEGATIVE_TRANSFER, pick_sentence, render_markdown
from tl_lightning.compare._stats import paired_t_test
from tl_lightning.compare.runs import RunRecord
from tl_lightning.errors import ConfigurationError

__all__ = [
    "SEED_NEGATIVE_TRANSFER",
    "ComparisonReport",
    "Difference",
    "StrategyStats",
    "build_report",
    "default_mode",
]

Verdict = Literal["better", "worse", "within noise", "untested"]


def default_mode(metric: str) -> Literal["max", "min"]:
    """``"min"`` for losses and error rates, ``"max"`` for everything else (accuracy, F1, AUROC).

    Example:
        >>> default_mode("test/acc"), default_mode("test/loss")
        ('max', 'min')
    """
    name = metric.rsplit("/", 1)[-1].lower()
    return (
        "min" if any(word in name for word in ("loss", "error", "err", "mse", "mae", "perplexity")) else "max"
    )


@dataclass
class StrategyStats:
    """One strategy's results over its seeds.

    Attributes:
        name: The strategy (arm) name.
        baseline: Whether it is the from-scratch baseline the others are compared with.
        seeds: Seeds that completed with a finite metric, in order.
        values: The metric for those seeds.
        planned: Jobs planned for the strategy (one per seed).
        mean: Mean of ``values`` (``None`` without any).
        std: Sample standard deviation (``ddof=1``; ``None`` with fewer than 2 values).
        min: Smallest value.
        max: Largest value.
        train_seconds: Mean training time of the completed runs.
        trainable_params: Trainable parameters (the largest count among its runs).
        total_params: All parameters of the model.
        problems: One line per job that is left out (failed, interrupted, missing, no metric).
        settings: ``lr``, ``max_epochs`` and ``pretrained`` of its first run.
    """

    name: str
    baseline: bool
    seeds: list[int | None]
    values: list[float]
    planned: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    train_seconds: float | None
    trainable_params: int | None
    total_params: int | None
    problems: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Difference:
    """``strategy`` against ``reference`` over the seeds both completed (paired).

    Attributes:
        strategy: The strategy compared.
        reference: What it is compared with (the baseline, or the best strategy).
        n: Seeds both completed.
        diff: Mean of ``strategy - reference`` per seed (``None`` without a common seed).
        p_value: Two-sided paired t-test p-value (``None`` with fewer than 2 common seeds).
        detectable: Smallest ``|diff|`` the test would call with this spread.
        verdict: ``better`` / ``worse`` (beyond noise, in the metric's direction), ``within
            noise``, or ``untested`` (fewer than 2 common seeds).
    """

    strategy: str
    reference: str
    n: int
    diff: float | None
    p_value: float | None
    detectable: float | None
    verdict: Verdict


@dataclass
class ComparisonReport:
    """What a strategy comparison found (see the module docstring for the rules).

    Attributes:
        metric: The compared metric (``test/acc``).
        mode: ``max`` (higher is better) or ``min``.
        alpha: Significance level of the paired tests.
        baseline: Name of the from-scratch strategy the others are compared with (``None`` when
            the sweep has no completed from-scratch run).
        baseline_name: The strategy name that marks a from-scratch run (``scratch``).
        strategies: Per-strategy results, in the sweep's order.
        versus_baseline: Every other strategy against the baseline.
        versus_best: Every other strategy against the best one.
        best: The strategy with the best mean.
        pick: The strategy to use (see :attr:`pick_sentence`).
        pick_sentence: The recommendation in one sentence with its numbers.
        negative_transfer: Pretrained strategies worse than the baseline beyond noise.
        runs: Every job, completed or not.
        sweep_dir: The sweep folder the runs came from.
    """

    metric: str
    mode: Literal["max", "min"]
    alpha: float
    baseline: str | None
    baseline_name: str
    strategies: list[StrategyStats]
    versus_baseline: list[Difference]
    versus_best: list[Difference]
    best: str | None
    pick: str | None
    pick_sentence: str
    negative_transfer: list[str]
    runs: list[RunRecord]
    sweep_dir: str | None = None

    def stats(self, name: str) -> StrategyStats:
        """The results of strategy ``name``."""
        for s in self.strategies:
            if s.name == name:
                return s
        raise ConfigurationError(
            f"no strategy {name!r} in this report; strategies: {[s.name for s in self.strategies]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``report.json`` (non-finite numbers as ``None``)."""
        data = asdict(self)
        data["runs"] = [r.to_dict() for r in self.runs]
        data["within_noise"] = [d.strategy for d in self.versus_best if d.verdict == "within noise"]
        return _finite(data)

    def to_markdown(self, picture: str | None = "report.png") -> str:
        """``report.md``: the verdicts in words, the table, the runs, and how it was decided.

        Args:
            picture: File name of the bar chart to embed, or ``None``.
        """
        return render_markdown(self, picture)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _stats(name: str, records: Sequence[RunRecord], metric: str, baseline: bool) -> StrategyStats:
    seeds: list[int | None] = []
    values: list[float] = []
    problems: list[str] = []
    done: list[RunRecord] = []
    for r in records:
        where = f"seed {r.seed} (job {r.job})"
        if r.status != "completed":
            problems.append(f"{where}: {r.status}" + (f": {r.message}" if r.message else ""))
            continue
        value = r.metrics.get(metric)
        if value is None or not math.isfinite(value):
            have = sorted(k for k in r.metrics if k.startswith(("test/", "val/")))
            problems.append(
                f"{where}: completed without a finite {metric} ("
                + (f"{metric}={value}" if value is not None else f"logged: {', '.join(have) or 'nothing'}")
                + ")"
            )
            continue
        seeds.append(r.seed)
        values.append(float(value))
        done.append(r)
    n = len(values)
    mean = math.fsum(values) / n if n else None
    std = (
        math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        if n >= 2 and mean is not None
        else None
    )
    times = [float(r.train_seconds) for r in done if r.train_seconds is not None]
    trainable = [r.trainable_params for r in done if r.trainable_params is not None]
    total = [r.total_params for r in done if r.total_params is not None]
    settings = next((r.settings for r in records if r.settings), {})
    return StrategyStats(
        name=name,
        baseline=baseline,
        seeds=seeds,
        values=values,
        planned=len(records),
        mean=mean,
        std=std,
        min=min(values) if values else None,
        max=max(values) if values else None,
        train_seconds=math.fsum(times) / len(times) if times else None,
        trainable_params=max(trainable) if trainable else None,
        total_params=max(total) if total else None,
        problems=problems,
        settings=dict(settings),
    )


def _compare(a: StrategyStats, b: StrategyStats, mode: str, alpha: float) -> Difference:
    common = [s for s in a.seeds if s in b.seeds and s is not None]
    xa = [a.values[a.seeds.index(s)] for s in common]
    xb = [b.values[b.seeds.index(s)] for s in common]
    test = paired_t_test(xa, xb, alpha=alpha)
    verdict: Verdict
    if test.p_value is None:
        verdict = "untested"
    elif not test.beyond_noise:
        verdict = "within noise"
    else:
        higher = (test.mean_diff or 0.0) > 0
        verdict = "better" if higher == (mode == "max") else "worse"
    return Difference(a.name, b.name, test.n, test.mean_diff, test.p_value, test.detectable, verdict)


def _goodness(s: StrategyStats, mode: str) -> float:
    assert s.mean is not None
    return s.mean if mode == "max" else -s.mean


def _cost(s: StrategyStats) -> tuple[float, float]:
    return (
        s.train_seconds if s.train_seconds is not None else math.inf,
        float(s.trainable_params) if s.trainable_params is not None else math.inf,
    )


def build_report(
    records: Sequence[RunRecord],
    metric: str = "test/acc",
    mode: Literal["max", "min"] | None = None,
    baseline: str = "scratch",
    alpha: float = 0.05,
    sweep_dir: str | None = None,
) -> ComparisonReport:
    """Compare the strategies of a sweep over seeds.

    Args:
        records: The sweep's runs (:func:`~tl_lightning.compare.runs.read_sweep`), every status.
        metric: The metric compared, as logged (``test/acc``, ``test/f1``, ``val/acc``).
        mode: ``max`` when higher is better, ``min`` when lower is; ``None`` infers it from the
            name (:func:`default_mode`: losses and errors ``min``).
        baseline: The strategy name of the from-scratch runs. When several arms carry it (another
            override was swept too), the best of them is the baseline: pretrained strategies must
            beat the strongest from-scratch result.
        alpha: Significance level of the paired t-tests.
        sweep_dir: Recorded in the report.

    Returns:
        The report.

    Example:
        >>> from tl_lightning.compare.runs import RunRecord
        >>> runs = [RunRecord(str(i), s, seed, "completed", {"test/acc": acc}, train_seconds=t)
        ...         for i, (s, seed, acc, t) in enumerate([
        ...             ("scratch", 1, 0.50, 30), ("scratch", 2, 0.52, 30), ("scratch", 3, 0.49, 30),
        ...             ("full", 1, 0.78, 20), ("full", 2, 0.77, 20), ("full", 3, 0.79, 20)])]
        >>> report = build_report(runs)
        >>> report.pick, report.negative_transfer, report.versus_baseline[0].verdict
        ('full', [], 'better')
    """
    if not isinstance(metric, str) or "/" not in metric:
        raise ConfigurationError(
            f"metric must name a logged metric like 'test/acc' or 'val/f1', got {metric!r}"
        )
    mode = check_choice("mode", mode if mode is not None else default_mode(metric), ["max", "min"])  # type: ignore[assignment]
    alpha = check_number("alpha", alpha, low=0.0, high=0.5, low_open=True)
    names: list[str] = []
    for r in records:
        if r.strategy not in names:
            names.append(r.strategy)
    strategies = [
        _stats(n, [r for r in records if r.strategy == n], metric, _strategy_name(n) == baseline)
        for n in names
    ]
    ranked = [s for s in strategies if s.mean is not None]
    scratch = [s for s in ranked if s.baseline]
    base = max(scratch, key=lambda s: _goodness(s, mode)) if scratch else None
    best = max(ranked, key=lambda s: _goodness(s, mode)) if ranked else None
    versus_baseline = [_compare(s, base, mode, alpha) for s in ranked if base is not None and s is not base]
    versus_best = [_compare(s, best, mode, alpha) for s in ranked if best is not None and s is not best]
    negative = [
        d.strategy
        for d in versus_baseline
        if d.verdict == "worse" and not _by_name(strategies, d.strategy).baseline
    ]

    pick = None
    if best is not None:
        ties = [_by_name(strategies, d.strategy) for d in versus_best if d.verdict == "within noise"]
        pick = min([best, *ties], key=lambda s: (*_cost(s), -_goodness(s, mode)))
    report = ComparisonReport(
        metric=metric,
        mode=mode,
        alpha=alpha,
        baseline=base.name if base else None,
        baseline_name=baseline,
        strategies=strategies,
        versus_baseline=versus_baseline,
        versus_best=versus_best,
        best=best.name if best else None,
        pick=pick.name if pick else None,
        pick_sentence="",
        negative_transfer=negative,
        runs=list(records),
        sweep_dir=sweep_dir,
    )
    report.pick_sentence = pick_sentence(report)
    return report


def _strategy_name(arm: str) -> str:
    """``"full (model.lr=0.0001)"`` -> ``"full"``."""
    return arm.split(" (", 1)[0]


def _by_name(strategies: Sequence[StrategyStats], name: str) -> StrategyStats:
    return next(s for s in strategies if s.name == name)
