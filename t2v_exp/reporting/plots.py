"""PNG plots: loss curves of all jobs on one chart, metric bars before/after."""

from __future__ import annotations

from pathlib import Path

from .collect import JobRow, metric_columns


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def loss_curves(rows: list[JobRow], path: Path) -> Path | None:
    curves = [r for r in rows if r.losses]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in curves:
        steps, losses = zip(*row.losses, strict=True)
        ax.plot(steps, losses, label=f"{row.model} / {row.dataset}", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_bars(rows: list[JobRow], path: Path) -> Path | None:
    columns = [c for c in metric_columns(rows) if any(c[0] in r.before or c[0] in r.after for r in rows)]
    jobs = [r for r in rows if r.before or r.after]
    if not columns or not jobs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(max(4, 3.2 * len(columns)), 3.8), squeeze=False)
    width = 0.38
    for ax, (metric, key) in zip(axes[0], columns, strict=True):
        positions = range(len(jobs))
        before = [r.before.get(metric, {}).get(key, float("nan")) for r in jobs]
        after = [r.after.get(metric, {}).get(key, float("nan")) for r in jobs]
        ax.bar([p - width / 2 for p in positions], before, width, label="base", color="#9aa7b8")
        ax.bar([p + width / 2 for p in positions], after, width, label="fine-tuned", color="#2f6fb5")
        ax.set_xticks(list(positions), [r.model for r in jobs], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{metric}/{key}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
