"""A sweep's summary for people: ``sweep_summary.csv`` written and shown as a table (sorted by
validation accuracy), at the end of ``metafsl sweep`` (a Hydra callback) and ``metafsl demo``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig
from rich.markup import escape

from metafsl.engine.sweep import collect, write_csv
from metafsl.reporting import console


def show(sweep_dir: Path, rows: List[Dict[str, Any]]) -> None:
    show_untrained = any(r["untrained_acc"] is not None for r in rows)
    cols = ["overrides", "val acc", "test acc ± ci95"] + (["untrained"] if show_untrained else []) + ["train s"]
    table_rows = []
    for r in rows:
        row = [escape(r["overrides"]) or "(defaults)", console.fmt_acc(r["val_acc"]),
               console.fmt_acc(r["test_acc"], r["ci95"])]
        if show_untrained:
            row.append(console.fmt_acc(r["untrained_acc"]))
        row.append("-" if r["seconds"] is None else f"{r['seconds']:.0f}")
        table_rows.append(row)
    console.table(f"Sweep {sweep_dir} ({len(rows)} jobs, sorted by val acc)", cols, table_rows,
                  justify_right=cols[1:])


def write_summary(sweep_dir: Path) -> List[Dict[str, Any]]:
    """Collect the jobs' summaries, show them, then write ``sweep_summary.csv``."""
    rows = collect(Path(sweep_dir))
    show(Path(sweep_dir), rows)
    write_csv(Path(sweep_dir), rows)
    return rows


class SweepSummary(HydraCallback):
    """``hydra.callbacks.sweep_summary`` of ``metafsl sweep``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.exists():
            write_summary(sweep_dir)
