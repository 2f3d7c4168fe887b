"""Rendering of a :class:`~tl_lightning.transferability.ranking.Ranking`: markdown table and PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tl_lightning.errors import ConfigurationError
from tl_lightning.transferability._scores import COST_BUDGET, SCORE_LABELS

if TYPE_CHECKING:
    from tl_lightning.transferability.ranking import Ranking

__all__ = ["ranking_markdown", "ranking_plot"]

_DIGITS = {"logme": 4, "leep": 4, "nce": 4, "hscore": 3, "linear_probe": 3}


def _fmt(score: str, value: float | None) -> str:
    return "–" if value is None else f"{value:.{_DIGITS[score]}f}"


def _seconds(value: float) -> str:
    return f"{value:,.1f} s" if value >= 0.1 else f"{value * 1000:,.0f} ms"


def ranking_markdown(ranking: Ranking) -> str:
    """The table, best first, then the notes and the cost line."""
    header = ["rank", "candidate"]
    header += [SCORE_LABELS[s] + (" (primary)" if s == ranking.primary else "") for s in ranking.scores]
    header += ["dim", "seconds"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---:", "---"] + ["---:"] * (len(header) - 2)) + "|",
    ]
    for row in ranking.rows:
        cells = [str(row.rank), row.name.replace("|", "\\|")]
        cells += [_fmt(s, row.scores[s]) for s in ranking.scores]
        cells += [str(row.feature_dim), f"{sum(row.seconds.values()):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Ranked by {SCORE_LABELS[ranking.primary]}; higher is better for every score.")
    for note in ranking.notes:
        lines.append(f"Note: {note}.")
    cost = ranking.cost
    text = (
        f"Cost of this ranking: {_seconds(cost.seconds)} (features {_seconds(cost.feature_seconds)}, "
        f"scores {_seconds(cost.seconds - cost.feature_seconds)})"
    )
    if cost.fine_tune_seconds is None:
        text += "; no fine-tuning estimate (a candidate has no forward timing)."
    else:
        text += (
            f"; fine-tuning every candidate for {cost.fine_tune_epochs} epochs: about "
            f"{_seconds(cost.fine_tune_seconds)} (estimated from the forward time, a lower bound); "
            f"ranking = {100 * cost.fraction:.2f}% of that "  # type: ignore[operator]
            f"({'within' if cost.within_budget else 'OVER'} the {100 * COST_BUDGET:g}% budget)."
        )
    lines.append(text)
    return "\n".join(lines) + "\n"


def ranking_plot(ranking: Ranking, path: Path) -> Path:
    """One PNG: a horizontal bar chart per score, candidates in rank order (best on top)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ConfigurationError(
            "Ranking.plot needs matplotlib; pip install matplotlib, or use to_markdown() / to_json()"
        ) from err
    names = [row.name for row in ranking.rows]
    k = len(ranking.scores)
    fig = Figure(figsize=(3.6 * k, 1.2 + 0.45 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, k, sharey=True, squeeze=False)[0]
    positions = list(range(len(names)))[::-1]  # rank 1 on top
    for ax, score in zip(axes, ranking.scores, strict=True):
        values = [row.scores[score] for row in ranking.rows]
        shown = [(p, v) for p, v in zip(positions, values, strict=True) if v is not None]
        colors = ["tab:orange" if score == ranking.primary else "tab:blue"] * len(shown)
        if shown:
            ax.barh([p for p, _ in shown], [v for _, v in shown], color=colors)
            for p, v in shown:
                ax.annotate(
                    f"{v:.3g}",
                    (v, p),
                    xytext=(3 if v >= 0 else -3, 0),
                    textcoords="offset points",
                    ha="left" if v >= 0 else "right",
                    va="center",
                    fontsize=8,
                )
        for p, v in zip(positions, values, strict=True):
            if v is None:
                ax.annotate("n/a", (0, p), ha="center", va="center", fontsize=8, color="gray")
        ax.axvline(0, color="black", linewidth=0.6)
        ax.margins(x=0.25)
        ax.set_title(SCORE_LABELS[score] + (" (primary)" if score == ranking.primary else ""), fontsize=10)
        ax.set_yticks(positions, names)
    fig.suptitle("Transferability of candidate backbones (higher is better)", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path
