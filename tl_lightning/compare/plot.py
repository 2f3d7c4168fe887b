"""``report.png``: the metric per strategy with its spread over seeds, and what each strategy costs.

Left: one bar per strategy at its mean, an error bar of one standard deviation, the single seeds
as dots; the from-scratch baseline hatched grey with a dashed line across at its mean, negative
transfer in red, the pick outlined in green. Right: mean training time, labelled with the
trainable parameters. Drawn on matplotlib's Agg canvas (no pyplot state, no window).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tl_lightning.diagnostics._output import new_figure, require_matplotlib, save_figure

if TYPE_CHECKING:
    from tl_lightning.compare.report import ComparisonReport

__all__ = ["COLORS", "plot_report"]

#: Bar colours by role.
COLORS = {"baseline": "#9e9e9e", "pretrained": "#4c78a8", "negative": "#d62728", "pick": "#2ca02c"}


def _params(value: int | None) -> str:
    from tl_lightning.compare._markdown import _params as fmt

    return fmt(value)


def _legend_handles(report: ComparisonReport) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=COLORS["baseline"], hatch="//", edgecolor="black", label="from scratch (baseline)"),
        Patch(facecolor=COLORS["pretrained"], edgecolor="black", label="pretrained strategy"),
        Patch(facecolor=COLORS["negative"], edgecolor="black", label="negative transfer"),
        Patch(facecolor="white", edgecolor=COLORS["pick"], linewidth=2.5, label="pick"),
    ]
    if report.baseline is not None:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1, label="scratch mean"))
    return handles


def plot_report(report: ComparisonReport, path: str | Path) -> Path:
    """Draw ``report`` into the PNG at ``path`` (parent folders created).

    Args:
        report: The comparison.
        path: The PNG to write (``<sweep folder>/report.png``).

    Returns:
        The path written.

    Example:
        >>> plot_report(report, "report.png")  # doctest: +SKIP
    """
    require_matplotlib("tl-compare's report.png", "or use report.md / report.json")
    strategies = report.strategies
    n = max(1, len(strategies))
    height = 2.4 + 0.5 * n
    fig = new_figure(11.0, height)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]}, sharey=True)
    positions = list(range(len(strategies)))[::-1]  # first strategy on top

    for y, s in zip(positions, strategies):
        color = (
            COLORS["negative"]
            if s.name in report.negative_transfer
            else (COLORS["baseline"] if s.baseline else COLORS["pretrained"])
        )
        if s.mean is None:
            left.text(
                0.0,
                y,
                "  no completed run",
                va="center",
                fontsize=9,
                color=COLORS["negative"],
                transform=left.get_yaxis_transform(),
            )
            continue
        left.barh(
            y,
            s.mean,
            height=0.6,
            color=color,
            alpha=0.85,
            hatch="//" if s.baseline else None,
            edgecolor=COLORS["pick"] if s.name == report.pick else "black",
            linewidth=2.5 if s.name == report.pick else 0.5,
        )
        if s.std is not None:
            left.errorbar(s.mean, y, xerr=s.std, fmt="none", ecolor="black", capsize=4, linewidth=1.2)
        left.scatter(s.values, [y] * len(s.values), s=14, color="black", zorder=3)
        label = f"{s.mean:.3f}" + (f" ± {s.std:.3f}" if s.std is not None else "") + f"  (n={len(s.values)})"
        left.annotate(
            label,
            (s.mean if s.std is None else s.mean + s.std, y),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    if report.baseline is not None:
        base = report.stats(report.baseline)
        left.axvline(base.mean, color="black", linestyle="--", linewidth=1)
    lows = [v for s in strategies for v in s.values]
    highs = [(s.mean or 0) + (s.std or 0) for s in strategies if s.mean is not None] + lows
    if lows:
        span = max(highs) - min(lows)
        low = min(lows) - 0.15 * span - 1e-3
        left.set_xlim(0.0 if low > 0 and min(lows) < 3 * span else low, max(highs) + 0.35 * span + 1e-3)
    left.set_ylim(-0.6, len(strategies) - 0.4)
    left.set_yticks(positions)
    left.set_yticklabels(
        [
            s.name
            + ("  [baseline]" if s.baseline else "")
            + ("  [negative transfer]" if s.name in report.negative_transfer else "")
            for s in strategies
        ],
        fontsize=9,
    )
    direction = "higher is better" if report.mode == "max" else "lower is better"
    left.set_xlabel(f"{report.metric} ({direction}); bar = mean, line = ±1 std, dots = seeds")
    left.set_title(
        f"pick: {report.pick}" if report.pick else "no completed runs",
        fontsize=10,
        color=COLORS["pick"] if report.pick else COLORS["negative"],
    )

    for y, s in zip(positions, strategies):
        if s.train_seconds is None:
            continue
        right.barh(
            y,
            s.train_seconds,
            height=0.6,
            color=COLORS["baseline"] if s.baseline else COLORS["pretrained"],
            alpha=0.6,
        )
        right.annotate(
            f"{s.train_seconds:.0f} s, {_params(s.trainable_params)} trainable",
            (s.train_seconds, y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    times = [s.train_seconds for s in strategies if s.train_seconds is not None]
    if times:
        right.set_xlim(0, max(times) * 1.9)
    right.set_xlabel("train time per run (s, mean over seeds)")
    right.tick_params(axis="y", left=False)
    fig.legend(handles=_legend_handles(report), loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0.0, 0.45 / height, 1.0, 1.0))
    return save_figure(fig, Path(path))
