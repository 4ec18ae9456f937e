"""Per-class reports, shown and written: a table of precision, recall, F1 (percent) and support
per class, and the confusion matrix (rows: true class, columns: predicted), as CSV files and a
PNG.  One implementation for a test on a dataset with named classes (``metafsl test``, a
training's final test) and for ``metafsl predict`` on labelled queries; the numbers come from
``metafsl.engine.metrics``.

Files (``prefix`` before each name, e.g. ``<predictions>_`` beside a predictions CSV):
``per_class.csv`` (``class,precision_pct,recall_pct,f1_pct,support``), ``confusion_matrix.csv``
(first column the true class, one column per predicted class) and ``confusion_matrix.png``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List, Sequence

from rich.markup import escape

from metafsl.engine.metrics import ClassReport, class_report_of_names
from metafsl.engine.run_dir import write_text
from metafsl.errors import UserError
from metafsl.reporting import console

PER_CLASS_CSV = "per_class.csv"
CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"
#: the confusion matrix is shown in the terminal up to this many classes (the files always hold it)
SHOWN_CLASSES = 12
#: the PNG names its rows and columns up to this many classes, and writes the counts up to ANNOTATED
LABELLED, ANNOTATED = 60, 20


def paths(folder: Path, prefix: str = "") -> List[Path]:
    """The files a report writes into ``folder``."""
    return [Path(folder) / f"{prefix}{name}" for name in (PER_CLASS_CSV, CONFUSION_CSV, CONFUSION_PNG)]


def show(report: ClassReport, what: str = "test queries") -> None:
    """The per-class table, then (up to ``SHOWN_CLASSES`` classes) the confusion matrix."""
    columns = ["class", "precision (%)", "recall (%)", "F1 (%)", "support"]
    console.table(f"Per class: {len(report.names)} classes, {report.total} {what}", columns,
                  [[escape(n), f"{p:.2f}", f"{r:.2f}", f"{f:.2f}", s] for n, p, r, f, s in report.rows()],
                  justify_right=columns[1:])
    if len(report.names) <= SHOWN_CLASSES:
        names = [escape(n) for n in report.names]
        console.table("Confusion matrix (rows: true class, columns: predicted)", ["true \\ predicted", *names],
                      [[n, *row] for n, row in zip(names, report.confusion)], justify_right=names)


def check_free(folder: Path, prefix: str, overwrite: bool) -> None:
    """Refuse, before any work is written, a report that would replace files (unless ``overwrite``)."""
    taken = [p for p in paths(folder, prefix) if p.exists()]
    if taken and not overwrite:
        raise UserError(f"{taken[0]} already exists; pass overwrite=true to replace it, or another out=.")


def write(report: ClassReport, folder: Path, prefix: str = "") -> List[Path]:
    """Write the report's CSV files and PNG into ``folder`` (each atomically)."""
    per_class_csv, confusion_csv, confusion_png = targets = paths(folder, prefix)
    write_text(per_class_csv, _csv([["class", "precision_pct", "recall_pct", "f1_pct", "support"],
                                    *report.rows()]), what="the per-class report")
    write_text(confusion_csv, _csv([["true \\ predicted", *report.names],
                                    *[[n, *row] for n, row in zip(report.names, report.confusion)]]),
               what="the confusion matrix")
    try:
        plot_confusion(report, confusion_png)
    except OSError as exc:
        raise UserError(f"Cannot write {confusion_png} ({exc.strerror or exc}).") from None
    return targets


def report_predictions(true: Sequence[str], predicted: Sequence[str], names: Sequence[str]) -> ClassReport:
    """The per-class report of labelled predictions (class names), shown; write it with ``write``."""
    report = class_report_of_names(true, predicted, names)
    show(report, "labelled queries")
    return report


def _csv(rows: List[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def plot_confusion(report: ClassReport, path: Path) -> Path:
    """The confusion matrix as a heat map (counts), rows true class, columns predicted."""
    from metafsl.reporting.plots import _pyplot, _save

    plt = _pyplot()
    k = len(report.names)
    side = min(20.0, 3.0 + 0.35 * k)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(report.confusion, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if k <= LABELLED:
        ax.set_xticks(range(k), report.names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), report.names, fontsize=8)
    if k <= ANNOTATED:
        top = max(max(row) for row in report.confusion) if k else 0
        for i, row in enumerate(report.confusion):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if count > top / 2 else "black")
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix ({report.total} queries)")
    fig.tight_layout()
    return _save(plt, fig, Path(path))
