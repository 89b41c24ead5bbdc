"""PNG plots: loss curves of all jobs on one chart, metric bars base vs fine-tuned (95% CI whiskers).

Each function returns the written path, or None when there is nothing to plot (the report then
says the plot was skipped instead of showing an empty chart).
"""

from __future__ import annotations

import math
from pathlib import Path

from .collect import JobRow, Score, metric_columns, pct_change

BASE_COLOR, TUNED_COLOR = "#9aa7b8", "#2f6fb5"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless nodes and inside a Hydra multirun
    import matplotlib.pyplot as plt

    return plt


def labels(rows: list[JobRow]) -> dict[str, str]:
    """Model names as labels; the job number is added where two jobs share a model."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.model] = counts.get(row.model, 0) + 1
    return {row.name: row.model if counts[row.model] == 1 else f"{row.model} #{row.name.split('_', 1)[0]}"
            for row in rows}


def loss_curves(rows: list[JobRow], path: Path) -> Path | None:
    curves = [r for r in rows if r.losses]
    if not curves:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    names = labels(rows)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in curves:
        steps, losses = zip(*sorted(row.losses), strict=True)
        # A job that died still shows how far it got, dashed so it is not read as a finished curve.
        style = "-" if row.ok else "--"
        label = names[row.name] + ("" if row.ok else f" ({row.status})")
        ax.plot(steps, losses, style, label=label, linewidth=1.3, marker="." if len(steps) < 30 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _values(scores: list[Score | None]) -> list[float]:
    return [math.nan if s is None else s.value for s in scores]


def _errors(scores: list[Score | None]):
    """Asymmetric error bars from the 95% CIs (zero-length where an evaluation has none)."""
    if not any(s is not None and s.has_ci for s in scores):
        return None
    low = [s.value - s.ci_low if s is not None and s.has_ci else 0.0 for s in scores]
    high = [s.ci_high - s.value if s is not None and s.has_ci else 0.0 for s in scores]
    return [low, high]


def metric_bars(rows: list[JobRow], path: Path) -> Path | None:
    jobs = [r for r in rows if r.before or r.after]
    pairs = metric_columns(jobs)
    if not pairs:
        return None
    plt = _pyplot()
    names = labels(rows)
    # Scores live on different scales (SSIM ~0.1, PSNR ~20 dB, CLIP score ~30): one panel each.
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    width = 0.38
    for ax, (metric, key) in zip(axes.flat, pairs, strict=False):
        positions = list(range(len(jobs)))
        before = [r.before.get(metric, {}).get(key) for r in jobs]
        after = [r.after.get(metric, {}).get(key) for r in jobs]
        ax.bar([p - width / 2 for p in positions], _values(before), width, yerr=_errors(before), capsize=3,
               label="base", color=BASE_COLOR)
        bars = ax.bar([p + width / 2 for p in positions], _values(after), width, yerr=_errors(after), capsize=3,
                      label="fine-tuned", color=TUNED_COLOR)
        for bar, row, b, a in zip(bars, jobs, before, after, strict=True):
            delta = row.deltas.get(metric, {}).get(key) or {}
            change = delta.get("pct_change") if delta else pct_change(b.value if b else None, a.value if a else None)
            if change is not None:
                # "n.s.": the paired CI of the delta contains 0, however large the bars' gap looks.
                label = f"{change:+.0f}%" + (" n.s." if delta.get("kind") == "paired" and not delta["significant"] else "")
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        flagged = any(s is not None and s.indicative_only for s in (*before, *after))
        ax.set_xticks(positions, [names[r.name] for r in jobs], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{metric} / {key}" + (" (indicative only)" if flagged else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)  # room for the % labels
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    handles, legend_labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="upper center", fontsize=8, ncols=2, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.6 * nrows)))  # keep the top strip for the legend
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
