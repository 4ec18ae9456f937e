"""The map of tasks (``metafsl tasks``), shown and written: the nearest-task listing on the
console, and ``task_map.png`` (test episodes coloured by group, training episodes in grey, the
user's task as a star), ``task_map.csv`` and ``nearest.csv`` (written atomically)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List

from rich.markup import escape

from metafsl.engine.run_dir import write_text
from metafsl.engine.task_map import MIXED, USER, TaskMap
from metafsl.reporting import console
from metafsl.reporting.plots import _pyplot, _save

MAP_PNG, MAP_CSV, NEAREST_CSV = "task_map.png", "task_map.csv", "nearest.csv"
#: groups coloured on the map, the most frequent first; the others are drawn as "other groups"
COLOURED = 20
def show(task_map: TaskMap) -> None:
    """What the map holds, the nearest tasks of the first test episodes and of the user's task."""
    counts = Counter(g for g, s in zip(task_map.groups, task_map.splits) if s != USER and s != "train")
    top = ", ".join(f"{escape(g)} ({n})" for g, n in counts.most_common(6))
    more = f", and {len(counts) - 6} more groups" if len(counts) > 6 else ""
    pc1, pc2 = (100 * e for e in task_map.explained)
    console.info(f"{escape(task_map.title)}: {len(task_map.ids)} tasks, task embedding = "
                 f"{escape(task_map.embedding)} ({task_map.dims} dims{', count-sketched' if task_map.sketched else ''}); PCA axes hold {pc1:.1f}% and "
                 f"{pc2:.1f}% of the variance. Test episodes by group: {top}{more}.")
    rows = []
    for task, neighbours in task_map.nearest:
        i = task_map.row(task)
        for rank, (other, d) in enumerate(neighbours, start=1):
            j = task_map.row(other)
            rows.append([task if rank == 1 else "", escape(task_map.groups[i]) if rank == 1 else "", rank,
                         other, f"{d:.4g}", escape(task_map.groups[j])])
    console.table("Nearest tasks (Euclidean distance between task embeddings; classes in nearest.csv)",
                  ["episode", "group", "rank", "nearest", "distance", "its group"], rows,
                  justify_right=["rank", "distance"])
    if task_map.user_nearest:
        console.table(f"Training tasks nearest to your task ({escape(', '.join(task_map.user_classes))})",
                      ["rank", "training episode", "distance", "group"],
                      [[r, t, f"{d:.4g}", escape(task_map.groups[task_map.row(t)])]
                       for r, (t, d) in enumerate(task_map.user_nearest, start=1)],
                      justify_right=["rank", "distance"])
        for t, _ in task_map.user_nearest:
            console.info(escape(f"  {t}: {', '.join(task_map.classes[task_map.row(t)])}"))


def write(task_map: TaskMap, folder: Path) -> List[Path]:
    """``task_map.csv``, ``nearest.csv`` and ``task_map.png`` in ``folder``, each atomically."""
    folder = Path(folder)
    write_text(folder / MAP_CSV, task_map.csv_text(), what=f"the task map to {folder / MAP_CSV}")
    write_text(folder / NEAREST_CSV, task_map.nearest_csv_text(), what=f"the nearest tasks to {folder / NEAREST_CSV}")
    return [folder / MAP_CSV, folder / NEAREST_CSV, plot(task_map, folder / MAP_PNG)]


def plot(task_map: TaskMap, path: Path) -> Path:
    """The 2-D map: test episodes coloured by group (``mixed`` in grey), training episodes as grey
    crosses, the user's task as a large star."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    xy = task_map.xy.tolist()
    split_of = task_map.splits
    test = [i for i, s in enumerate(split_of) if s not in (USER, "train")]
    train = [i for i, s in enumerate(split_of) if s == "train"]
    if train:
        ax.scatter([xy[i][0] for i in train], [xy[i][1] for i in train], marker="x", s=14, color="0.65",
                   label=f"training episodes ({len(train)})", zorder=1)
    counts = Counter(task_map.groups[i] for i in test)
    coloured = [g for g, _ in counts.most_common() if g != MIXED][:COLOURED]
    cmap = plt.get_cmap("tab20" if len(coloured) > 10 else "tab10")
    for g in [MIXED, *coloured, None]:
        members = [i for i in test if (task_map.groups[i] == g if g is not None
                                       else task_map.groups[i] not in coloured and task_map.groups[i] != MIXED)]
        if not members:
            continue
        colour = "0.35" if g == MIXED else ("0.8" if g is None else cmap(coloured.index(g) % cmap.N))
        label = f"{g if g is not None else 'other groups'} ({len(members)})"
        ax.scatter([xy[i][0] for i in members], [xy[i][1] for i in members], s=18, color=colour,
                   label=label, alpha=0.85, zorder=2)
    for i, s in enumerate(split_of):
        if s == USER:
            ax.scatter([xy[i][0]], [xy[i][1]], marker="*", s=320, color="gold", edgecolor="black",
                       label="your task", zorder=3)
    pc1, pc2 = (100 * e for e in task_map.explained)
    ax.set(xlabel=f"PC 1 ({pc1:.1f}% of variance)", ylabel=f"PC 2 ({pc2:.1f}% of variance)",
           title=task_map.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return _save(plt, fig, Path(path))
