"""PNG plots: loss curves of all jobs on one chart, metric bars base vs fine-tuned (95% CI whiskers).

Each function returns the written path, or None when there is nothing to plot (the report then
says the plot was skipped instead of showing an empty chart).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..scoring.comparison import pct_change
from .collect import JobRow, Score, metric_columns, prompt_label

BASE_COLOR, TUNED_COLOR = "#9aa7b8", "#2f6fb5"


def _pyplot():
    import matplotlib  # deferred: matplotlib only when a plot is drawn

    matplotlib.use("Agg")  # files only: works on headless nodes and inside a Hydra multirun
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import

    return plt


def labels(rows: list[JobRow]) -> dict[str, str]:
    """Model names as labels; the job number is added where two jobs share a model."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.model] = counts.get(row.model, 0) + 1
    return {row.name: row.model if counts[row.model] == 1 else f"{row.model} #{row.name.split('_', 1)[0]}"
            for row in rows}


OBJECTIVE_NOTE = "losses of different objectives (epsilon, v-prediction, flow matching) are not comparable"


def loss_curves(rows: list[JobRow], path: Path) -> Path | None:
    """One panel per training objective: an epsilon loss and a v-prediction loss share no scale."""
    curves = [r for r in rows if r.losses]
    if not curves:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # deferred: as _pyplot

    names = labels(rows)
    groups: dict[str, list[JobRow]] = {}
    for row in curves:
        groups.setdefault(row.objective or "objective not recorded", []).append(row)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
    for ax, (objective, members) in zip(axes[0], groups.items(), strict=True):
        for row in members:
            steps, losses = zip(*sorted(row.losses), strict=True)
            # A job that died still shows how far it got, dashed so it is not read as a finished curve.
            style = "-" if row.ok else "--"
            label = names[row.name] + ("" if row.ok else f" ({row.status})")
            ax.plot(steps, losses, style, label=label, linewidth=1.3, marker="." if len(steps) < 30 else None)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"Training loss: {objective}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if len(groups) > 1:
        fig.suptitle(OBJECTIVE_NOTE, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _frames(path: Path):
    import av  # deferred: PyAV only when frames are read for the grid

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return [frames[0], frames[len(frames) // 2], frames[-1]] if frames else [np.zeros((8, 8, 3), np.uint8)] * 3


def frame_grid(rows: list[JobRow], path: Path, max_prompts: int = 3) -> Path | None:
    """First / middle / last frame per model per prompt, base above fine-tuned (same prompt, same seed):
    a still picture of what fine-tuning changed, readable where the videos do not play."""
    with_pairs = [r for r in rows if any(b is not None and t is not None for _, b, t in r.videos)]
    if not with_pairs:
        return None
    # The prompts every job evaluated (a controlled comparison shares them all); jobs on different data
    # share none, and then each shows its own first prompt.
    shared = set.intersection(*({n for n, b, t in r.videos if b is not None and t is not None} for r in with_pairs))
    prompts = [n for n, _, _ in with_pairs[0].videos if n in shared][:max_prompts]
    plt = _pyplot()
    names = labels(rows)
    columns = max(1, len(prompts)) * 3
    fig, axes = plt.subplots(2 * len(with_pairs), columns, figsize=(1.3 * columns, 1.45 * 2 * len(with_pairs)),
                             squeeze=False)
    for r_index, row in enumerate(with_pairs):
        by_name = {n: (b, t) for n, b, t in row.videos}
        shown = prompts or [next(n for n, b, t in row.videos if b is not None and t is not None)]
        for p_index, name in enumerate(shown):
            for side, video in enumerate(by_name.get(name, (None, None))):
                frames = _frames(video) if video is not None else []
                for f_index in range(3):
                    ax = axes[2 * r_index + side][3 * p_index + f_index]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if f_index < len(frames):
                        ax.imshow(frames[f_index], interpolation="nearest")
                    if f_index == 0 and p_index == 0:
                        ax.set_ylabel(f"{names[row.name]}\n{'base' if side == 0 else 'fine-tuned'}", fontsize=7)
                    if r_index == 0 and side == 0:
                        ax.set_title(("first", "middle", "last")[f_index] + ("\n" + prompt_label(name)[:28]
                                     if f_index == 1 else ""), fontsize=7)
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


def change_label(delta: dict, before: Score | None, after: Score | None) -> str | None:
    """The change above a fine-tuned bar, in the unit the tables use: percentage points for accuracies,
    points for other paired scores, % only for set scores (ratio-scale); "n.s." where the paired test
    did not call it (the bars' gap can look large whatever the interval says)."""
    if delta.get("kind") in ("paired", "set_change"):
        value = delta.get("mean_delta", delta.get("delta"))
        if value is None:
            return None
        text = f"{100 * value:+.0f}pp" if delta.get("unit") == "pp" else f"{value:+.2g}"
        return text + ("" if delta.get("significant") else " n.s.")
    change = delta.get("pct_change") if delta else pct_change(before.value if before else None,
                                                                after.value if after else None)
    return None if change is None else f"{change:+.0f}%"


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
            label = change_label(row.deltas.get(metric, {}).get(key) or {}, b, a)
            if label is not None:
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
