"""Figures written next to results (matplotlib, Agg backend: no display needed).

- ``curves.png`` per run: training loss, training and validation accuracy vs iteration,
  read from the run's ``metrics.jsonl``.
- ``metafsl results ... plot=shots``: test accuracy vs shots and vs ways across runs.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional

from metafsl.engine.run_dir import METRICS, MetricsLog, replace_atomically

CURVES = "curves.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: Path, title: str = "") -> Optional[Path]:
    """Write ``<run_dir>/curves.png``; None when the run logged nothing yet."""
    records = MetricsLog(Path(run_dir) / METRICS).read()
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    if not train and not val:
        return None
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        ax_loss.plot([r["iteration"] for r in train], [r["loss"] for r in train], color="tab:red")
        ax_acc.plot([r["iteration"] for r in train], [r["acc"] for r in train], label="train (running)",
                    color="tab:blue", alpha=0.7)
    if val:
        ax_acc.errorbar([r["iteration"] for r in val], [r["acc"] for r in val],
                        yerr=[r.get("ci95", 0.0) for r in val], label="validation", color="tab:green",
                        marker="o", ms=3, capsize=2)
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="loss")
    ax_acc.set(xlabel="iteration", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    # fixed margins, not tight_layout(): that draws the whole figure once more only to measure it,
    # as much CPU again as saving it, at the end of every run
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.13, top=0.82 if title else 0.9, wspace=0.22)
    return _save(plt, fig, Path(run_dir) / CURVES)


def plot_shots(rows: List[Dict[str, Any]], path: Path) -> Path:
    """Test accuracy (± CI) vs shots (one line per method, dataset and way) and vs ways
    (one line per method, dataset and shot), from ``metafsl results`` rows."""
    plt = _pyplot()
    by_way: Dict[tuple, list] = defaultdict(list)
    by_shot: Dict[tuple, list] = defaultdict(list)
    for r in rows:
        if r.get("test") is None or r.get("way") is None:
            continue
        by_way[(r["algo"], r["dataset"], r["way"])].append((r["shot"], r["test"], r.get("ci95") or 0.0))
        by_shot[(r["algo"], r["dataset"], r["shot"])].append((r["way"], r["test"], r.get("ci95") or 0.0))
    fig, (ax_s, ax_w) = plt.subplots(1, 2, figsize=(11, 4))
    for (algo, dataset, way), pts in sorted(by_way.items()):
        pts.sort()
        ax_s.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                      capsize=2, label=f"{algo} · {dataset} · {way}-way")
    for (algo, dataset, shot), pts in sorted(by_shot.items()):
        pts.sort()
        ax_w.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="s",
                      capsize=2, label=f"{algo} · {dataset} · {shot}-shot")
    ax_s.set(xlabel="shots (support examples per class)", ylabel="test accuracy (%)", title="accuracy vs shots")
    ax_w.set(xlabel="ways (classes per task)", ylabel="test accuracy (%)", title="accuracy vs ways")
    for ax in (ax_s, ax_w):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(plt, fig, Path(path))


def _save(plt, fig, path: Path) -> Path:
    """Write the figure atomically (a failed write, read-only or full disk, leaves no partial image)."""
    try:
        replace_atomically(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=100),
                           binary=True)
    finally:
        plt.close(fig)
    return path
