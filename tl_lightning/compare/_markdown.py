"""The comparison in words: ``report.md`` and the one-sentence pick."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tl_lightning.compare._stats import detectable_t

if TYPE_CHECKING:
    from tl_lightning.compare.report import ComparisonReport, Difference, StrategyStats

__all__ = ["SEED_NEGATIVE_TRANSFER", "pick_sentence", "render_markdown"]

#: The seed document's section on negative transfer, quoted word for word in the report.
SEED_NEGATIVE_TRANSFER = {
    "cause": (
        "Source and target domains share insufficient structure. Pretrained features are misleading for the "
        "target task (e.g., ImageNet to manufacturing defect detection where relevant features differ "
        "fundamentally)."
    ),
    "symptoms": (
        "Fine-tuned model performs worse than a from-scratch baseline. Validation loss exceeds random "
        "initialization. Training loss decreases but validation stagnates."
    ),
    "mitigation": (
        "Always compare against a from-scratch baseline. Try: (1) use only lower pretrained layers, (2) choose a "
        "domain-closer pretrained model, (3) continued pretraining on unlabeled target data, (4) domain "
        "adaptation techniques."
    ),
    "misalignment_symptoms": (
        "Very poor performance from the start. Near-random predictions even before fine-tuning. Loss does not "
        "decrease."
    ),
}


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def _params(value: int | None) -> str:
    if value is None:
        return "n/a"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return str(value)


def _spread(s: StrategyStats) -> str:
    seeds = len(s.values)
    if s.mean is None:
        return "no completed run"
    if s.std is None:
        return f"{_num(s.mean)} (1 seed, no spread)"
    return f"{_num(s.mean)} ± {s.std:.3f} over {seeds} seeds"


def _names(items: Sequence[str]) -> str:
    quoted = [f"`{x}`" for x in items]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _cost_text(s: StrategyStats) -> str:
    return f"{_seconds(s.train_seconds)} of training, {_params(s.trainable_params)} trainable parameters"


def pick_sentence(report: ComparisonReport) -> str:
    """The recommendation in one sentence, with its numbers (empty when nothing completed)."""
    if report.pick is None or report.best is None:
        return "No strategy completed a run with a finite " + f"`{report.metric}`: nothing to pick."
    pick, best = report.stats(report.pick), report.stats(report.best)
    ties = [d for d in report.versus_best if d.verdict == "within noise"]
    tail = ""
    compared = [d for d in report.versus_baseline if not report.stats(d.strategy).baseline]
    if pick.baseline and compared:
        tail = (
            " Transfer is not worth it here: no pretrained strategy beats training from scratch beyond noise."
        )
    elif pick.baseline:
        tail = " No pretrained strategy completed a run to compare with."
    if pick is best:
        if not ties:
            others = (
                "ahead of every other strategy beyond noise"
                if report.versus_best and all(d.verdict == "worse" for d in report.versus_best)
                else "the best mean"
            )
            return f"Pick `{pick.name}`: {report.metric} {_spread(pick)}, {others}; {_cost_text(pick)}.{tail}"
        tied = ", ".join(f"`{d.strategy}` at {_num(report.stats(d.strategy).mean)}" for d in ties)
        return (
            f"Pick `{pick.name}`: the best {report.metric}, {_spread(pick)}, and the cheapest of the strategies "
            f"within noise of it ({tied}); {_cost_text(pick)}.{tail}"
        )
    d = next(x for x in ties if x.strategy == pick.name)
    return (
        f"Pick `{pick.name}`: {report.metric} {_spread(pick)} is within noise of the best, `{best.name}` "
        f"at {_spread(best)} (paired difference {_signed(d.diff)}, {_p(d.p_value)}), at a lower cost: "
        f"{_seconds(pick.train_seconds)} of training instead of {_seconds(best.train_seconds)}, "
        f"{_params(pick.trainable_params)} trainable parameters instead of {_params(best.trainable_params)}.{tail}"
    )


def _recipe(settings: dict) -> str:
    """``"1e-4"``, or ``"1e-4 (head 1e-3)"`` when the head has its own LR."""

    def fmt(value: object) -> str:
        return f"{value:g}" if isinstance(value, (int, float)) else str(value)

    lr, head = settings.get("lr"), settings.get("head_lr")
    if lr is None:
        return "?"
    return fmt(lr) + (f" (head {fmt(head)})" if head is not None and head != lr else "")


def _difference_cell(d: Difference | None) -> str:
    if d is None:
        return "—"
    if d.verdict == "untested":
        return f"{_signed(d.diff)} (untested: {d.n} common seed{'s' if d.n != 1 else ''})"
    return f"{_signed(d.diff)} ({_p(d.p_value)}): {d.verdict}"


def _transfer_paragraphs(report: ComparisonReport) -> list[str]:
    out: list[str] = []
    if report.baseline is None:
        out.append(
            f"**No from-scratch baseline** (`{report.baseline_name}`) completed in this sweep, so whether transfer "
            'helps cannot be told. The seed document: "Always compare against a from-scratch baseline." Add it: '
            f"`compare.strategies=[{report.baseline_name},...]`."
        )
        return out
    base = report.stats(report.baseline)
    pretrained = [d for d in report.versus_baseline if not report.stats(d.strategy).baseline]
    better = [d for d in pretrained if d.verdict == "better"]
    noise = [d for d in pretrained if d.verdict == "within noise"]
    untested = [d for d in pretrained if d.verdict == "untested"]
    if better:
        gains = ", ".join(f"`{d.strategy}` ({_signed(d.diff)}, {_p(d.p_value)})" for d in better)
        verb = "beats" if len(better) == 1 else "beat"
        out.append(
            f"**Transfer helps**: {gains} {verb} training from scratch ({_spread(base)}) beyond noise."
        )
    if report.negative_transfer:
        flagged = [d for d in pretrained if d.strategy in report.negative_transfer]
        numbers = "; ".join(
            f"`{d.strategy}` {_spread(report.stats(d.strategy))}, {_signed(d.diff)} against scratch per seed on "
            f"average ({d.n} paired seeds, {_p(d.p_value)})"
            for d in flagged
        )
        everyone = len(report.negative_transfer) == len(pretrained) and len(pretrained) > 1
        subject = (
            "Every pretrained strategy does" if everyone else ("It does" if len(flagged) == 1 else "They do")
        )
        out.append(
            f"**Negative transfer: {_names(report.negative_transfer)}.** {subject} worse than training from "
            f"scratch ({_spread(base)}) beyond noise: {numbers}. The seed document calls "
            f'this negative transfer ("{SEED_NEGATIVE_TRANSFER["symptoms"].split(". ")[0]}."); its cause: '
            f'"{SEED_NEGATIVE_TRANSFER["cause"]}"'
        )
        out.append(
            f'Its mitigations, in the seed document\'s words: "{SEED_NEGATIVE_TRANSFER["mitigation"]}" With this '
            'library: rule out feature misalignment first, whose symptoms look the same ("'
            f"{SEED_NEGATIVE_TRANSFER['misalignment_symptoms']}\"): run with `'callbacks=[default,input_check]'`; "
            "for (1), keep the lower layer groups and retrain the upper ones (`finetune=top_n` with a larger "
            "`finetune.n`, or `finetune=gradual`; `tl-groups` lists the groups); for (2), rank candidate "
            "backbones on this data before fine-tuning them (`tl_lightning.transferability.rank_candidates`: "
            "LogME, LEEP, NCE, H-score, linear probe); (3) and (4) are outside this library."
        )
    if noise:
        items = ", ".join(
            f"`{d.strategy}` ({_signed(d.diff)}, {_p(d.p_value)}; would need beyond ±{_num(d.detectable)})"
            for d in noise
        )
        below = [d.strategy for d in noise if d.diff is not None and (d.diff < 0) == (report.mode == "max")]
        out.append(
            f"**Within noise of scratch**: {items}. With these seeds the data cannot tell them from training "
            "from scratch: no evidence that transfer helps, nor of negative transfer"
            + (
                f" ({_names(below)} {'is' if len(below) == 1 else 'are'} below scratch on average, but not beyond "
                "noise)"
                if below
                else ""
            )
            + "."
        )
    if untested:
        out.append(
            "**Untested against scratch** (fewer than 2 seeds in common): "
            + ", ".join(f"`{d.strategy}` ({_signed(d.diff)})" for d in untested)
            + ". Run more seeds (`compare.seeds=3`) to tell a difference from noise."
        )
    if not report.negative_transfer and pretrained and not untested:
        out.append("No negative transfer: no pretrained strategy is below scratch beyond noise.")
    return out


def _noise_paragraph(report: ComparisonReport) -> str:
    ties = [d for d in report.versus_best if d.verdict == "within noise"]
    counts = [d.n for d in [*report.versus_best, *report.versus_baseline] if d.n >= 2]
    power = ""
    if counts:
        n = max(set(counts), key=lambda k: (counts.count(k), k))
        t = detectable_t(report.alpha, n)
        fewer = " (fewer where a job did not complete)" if min(counts) < n else ""
        power = (
            f" With {n} paired seeds{fewer} the test has {n - 1} degree{'s' if n > 2 else ''} of freedom: a mean difference "
            f"must exceed {t:.2f} standard errors of the per-seed differences to count (two-sided, α = "
            f'{report.alpha:g}). "Within noise" therefore means "not shown to differ", not "equal"; more seeds '
            "(`compare.seeds=5`) sharpen the test."
        )
    if ties:
        items = ", ".join(
            f"`{d.strategy}` ({_signed(d.diff)}, {_p(d.p_value)}; would need beyond ±{_num(d.detectable)})"
            for d in ties
        )
        return f"Within noise of the best (`{report.best}`): {items}.{power}"
    if report.versus_best:
        return f"Every other strategy is below the best (`{report.best}`) beyond noise or untested.{power}"
    return power.strip()


def render_markdown(report: ComparisonReport, picture: str | None = "report.png") -> str:
    """``report.md`` for ``report`` (see :meth:`ComparisonReport.to_markdown`)."""
    direction = "higher is better" if report.mode == "max" else "lower is better"
    seeds = sorted({s for st in report.strategies for s in st.seeds if s is not None})
    lines = ["# Is transfer worth it here? Strategy comparison", ""]
    lines.append(
        f"`{report.metric}` ({direction}) of {len(report.strategies)} strategies over seed{'s' if len(seeds) != 1 else ''} "
        f"{', '.join(str(s) for s in seeds) or '(none completed)'}; each seed gives every strategy the same data "
        "split, training order and augmentation."
        + (f" Sweep folder: `{report.sweep_dir}`." if report.sweep_dir else "")
    )
    lines += ["", "## Verdict", "", report.pick_sentence, ""]
    for paragraph in _transfer_paragraphs(report):
        lines += [paragraph, ""]
    noise = _noise_paragraph(report)
    if noise:
        lines += [noise, ""]
    if picture:
        lines += [f"![{report.metric} per strategy, mean and spread over seeds]({picture})", ""]

    lines += ["## Results", ""]
    vs = {d.strategy: d for d in report.versus_baseline}
    lines.append(
        f"| strategy | runs | {report.metric} mean ± std | min – max | vs scratch | train time | "
        "trainable params | lr, epochs |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for s in report.strategies:
        marks = []
        if s.name == report.baseline:
            marks.append("baseline")
        if s.name in report.negative_transfer:
            marks.append("**negative transfer**")
        if s.name == report.pick:
            marks.append("**pick**")
        name = f"`{s.name}`" + (f" ({', '.join(marks)})" if marks else "")
        spread = (
            "—"
            if s.mean is None
            else (f"{_num(s.mean)} ± {s.std:.3f}" if s.std is not None else _num(s.mean))
        )
        span = "—" if s.min is None else f"{_num(s.min)} – {_num(s.max)}"
        versus = "baseline" if s.name == report.baseline else _difference_cell(vs.get(s.name))
        params = _params(s.trainable_params) + (f" of {_params(s.total_params)}" if s.total_params else "")
        epochs = s.settings.get("max_epochs")
        lines.append(
            f"| {name} | {len(s.values)}/{s.planned} | {spread} | {span} | {versus} | "
            f"{_seconds(s.train_seconds)} | {params} | {_recipe(s.settings)}, {epochs if epochs is not None else '?'} |"
        )
    lines.append("")

    problems = [(s.name, p) for s in report.strategies for p in s.problems]
    lines += ["## Runs", ""]
    if problems:
        lines.append(
            f"{len(problems)} of {len(report.runs)} jobs are left out of the numbers above (their seeds "
            "drop out of that strategy's mean and of its paired comparisons):"
        )
        lines.append("")
        lines += [f"- `{name}` {problem}" for name, problem in problems]
    else:
        lines.append(f"All {len(report.runs)} jobs completed.")
    lines.append("")
    lines += [
        "| job | strategy | seed | status | " + report.metric + " | train time | folder |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.runs:
        value = r.metrics.get(report.metric)
        lines.append(
            f"| {r.job} | `{r.strategy}` | {r.seed if r.seed is not None else '?'} | {r.status} | "
            f"{_num(value) if value is not None else '—'} | {_seconds(r.train_seconds)} | "
            f"{r.folder or '—'} |"
        )
    lines.append("")

    lines += ["## How this was decided", ""]
    lines.append(
        "Every strategy is compared with the from-scratch baseline and with the best strategy by a paired "
        "t-test over the seeds both completed (the per-seed differences remove what the split does to both), "
        f"two-sided at α = {report.alpha:g}: beyond noise when p < α, within noise otherwise, untested with fewer "
        "than 2 common seeds. Negative transfer: a pretrained strategy worse than scratch beyond noise. The pick: "
        "among the best mean and the strategies within noise of it, the one with the least training time "
        "(then the fewest trainable parameters). Trainable parameters are those that required gradients when "
        "training ended. Each strategy keeps its own recipe (learning rate, epochs: last column); a sweep "
        "override such as `trainer.max_epochs=...` applies to all of them."
    )
    lines.append("")
    return "\n".join(lines)
