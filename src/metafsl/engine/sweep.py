"""Hydra callback for `metafsl sweep`: collect every job's summary into sweep_summary.csv
and print it as a table sorted by validation accuracy."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from metafsl.engine.run_dir import SUMMARY
from metafsl.engine.summary import RunSummary
from metafsl.errors import UserError

COLUMNS = ["job", "overrides", "val_acc", "test_acc", "ci95", "seconds", "untrained_acc", "run_dir"]


def collect(sweep_dir: Path) -> List[Dict[str, Any]]:
    rows = []
    for summary_path in sorted(Path(sweep_dir).glob(f"*/{SUMMARY}")):
        job = summary_path.parent
        try:
            s = RunSummary.read(job).to_dict()
        except UserError as exc:  # one unreadable summary must not hide the others
            from metafsl.reporting import console as out

            out.info(f"[yellow]warning:[/] skipped: {exc}")
            continue
        ov_file = job / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(ov_file)) if ov_file.exists() else []
        test = s.get("test", {})
        rows.append({
            "job": job.name.split("_", 1)[0],
            "overrides": " ".join(overrides),
            "val_acc": s.get("val", {}).get("best_acc"),
            "test_acc": test.get("acc"),
            "ci95": test.get("ci95"),
            "seconds": s.get("train", {}).get("seconds"),
            "untrained_acc": s.get("untrained", {}).get("acc"),
            "run_dir": str(job),
        })
    rows.sort(key=lambda r: (r["val_acc"] is None, -(r["val_acc"] or 0), -(r["test_acc"] or 0)))
    return rows


def write_summary(sweep_dir: Path) -> List[Dict[str, Any]]:
    from metafsl.reporting import console as out

    rows = collect(sweep_dir)
    with open(Path(sweep_dir) / "sweep_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else (round(r[k], 4) if isinstance(r[k], float) else r[k]))
                        for k in COLUMNS})
    show_untrained = any(r["untrained_acc"] is not None for r in rows)
    cols = ["overrides", "val acc", "test acc ± ci95"] + (["untrained"] if show_untrained else []) + ["train s"]
    table_rows = []
    for r in rows:
        row = [r["overrides"] or "(defaults)", out.fmt_acc(r["val_acc"]), out.fmt_acc(r["test_acc"], r["ci95"])]
        if show_untrained:
            row.append(out.fmt_acc(r["untrained_acc"]))
        row.append("-" if r["seconds"] is None else f"{r['seconds']:.0f}")
        table_rows.append(row)
    out.table(f"Sweep {sweep_dir} ({len(rows)} jobs, sorted by val acc)", cols, table_rows,
              justify_right=cols[1:])
    return rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.exists():
            write_summary(sweep_dir)
