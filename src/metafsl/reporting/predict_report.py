"""What ``metafsl predict`` shows: the threshold and how it was chosen, the predictions (the first
``SHOWN`` rows; the CSV holds all), a one-line summary (answers per class, unknown, skipped) and
the files skipped, by name."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from rich.markup import escape

from metafsl.reporting import console

#: prediction rows and skipped files listed on the console (the CSV has every one)
SHOWN = 20


def print_predictions(result, run: Path) -> None:
    """``result``: ``metafsl.engine.predict.Predictions``."""
    shots = ", ".join(f"{n} ({len(fs)})" for n, fs in zip(result.names, result.support_files))
    console.info(f"[bold]metafsl predict[/] {result.algo} from {escape(str(run))}; support classes: {escape(shots)}")
    if result.calibration is not None:
        console.info(f"predict.reject=auto: unknown below {result.calibration.describe()}.")
    elif result.threshold is not None:
        console.info(f"predict.reject_below: unknown below top probability {result.threshold:g}.")
    if result.transductive != "none":
        console.info(f"Transductive ({result.transductive}): all {len(result.queries)} query images were classified "
                     "together, so each prediction depends on the others; the query set should be one task.")
    _table(result)
    console.info(summary_line(result))
    _skipped(result)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _common_folder(paths) -> str:
    """The folder all ``paths`` are under ("" when none, or only the current one)."""
    try:
        common = os.path.commonpath([os.path.dirname(str(p)) for p in paths])
    except ValueError:  # absolute and relative paths mixed
        return ""
    return "" if common in ("", ".", os.sep) else common


def _table(result) -> None:
    n = len(result.queries)
    values, indices = result.top()
    under = _common_folder(result.queries)
    names = [os.path.relpath(str(q), under) if under else str(q) for q in result.queries[:SHOWN]]
    rows = [[escape(name), escape(answer), f"{vs[0]:.3f}",
             escape(" · ".join(f"{result.names[k]} {v:.3f}" for v, k in zip(vs, ks)))]
            for name, answer, vs, ks in zip(names, result.predicted[:SHOWN], values, indices)]
    title = f"Predictions for {plural(n, 'image')}" + (f" in {escape(under)}" if under else "") + \
        (f" (the first {SHOWN}; all in the CSV)" if n > SHOWN else "")
    console.table(title, ["file", "predicted", "probability", f"top {len(values[0]) if values else 0}"],
                  rows, justify_right=["probability"])


def summary_line(result) -> str:
    """e.g. "120 query files: 100 classified (cat 60, dog 40), 15 unknown (...), 5 skipped." """
    answers = Counter(result.predicted)
    unknown = answers.pop("unknown", 0)
    named = ", ".join(f"{n} {answers[n]}" for n in result.names if answers[n])
    total = len(result.queries) + len(result.skipped)
    parts = [f"{plural(total, 'query file')}: {len(result.queries) - unknown} classified ({escape(named) or 'none'})"]
    if result.threshold is not None:
        parts.append(f"{unknown} unknown (top probability below {result.threshold:.6g})")
    parts.append(f"{len(result.skipped)} skipped (unreadable)")
    notes = []
    if result.ignored:
        notes.append(f"{plural(result.ignored, 'file')} without an image extension ignored")
    if result.duplicates:
        notes.append(f"{plural(result.duplicates, 'file')} given twice, classified once")
    return ", ".join(parts) + (f"; {'; '.join(notes)}" if notes else "") + "."


def _skipped(result) -> None:
    if not result.skipped:
        return
    console.info(f"[yellow]Skipped {plural(len(result.skipped), 'query file')}, not readable as images[/] "
                 "(rows with predicted=skipped in the CSV, the reason in its error column):")
    for path, reason in result.skipped[:SHOWN]:
        console.info(f"  {escape(str(path))}: {escape(reason)}")
    if len(result.skipped) > SHOWN:
        console.info(f"  ... and {len(result.skipped) - SHOWN} more (all in the CSV)")
