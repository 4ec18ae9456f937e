"""A sweep's jobs as rows: every job's summary collected into ``sweep_summary.csv``
(shown as a table by ``metafsl.reporting.sweeps``)."""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Dict, List

from omegaconf import OmegaConf

from metafsl.engine.run_dir import SUMMARY, write_text
from metafsl.engine.summary import RunSummary
from metafsl.errors import UserError

COLUMNS = ["job", "overrides", "val_acc", "test_acc", "ci95", "seconds", "untrained_acc", "run_dir"]
CSV_NAME = "sweep_summary.csv"
log = logging.getLogger(__name__)


def collect(sweep_dir: Path) -> List[Dict[str, Any]]:
    """One row per job with a readable summary, sorted by validation accuracy (best first)."""
    rows = []
    for summary_path in sorted(Path(sweep_dir).glob(f"*/{SUMMARY}")):
        job = summary_path.parent
        try:
            s = RunSummary.read(job).to_dict()
        except UserError as exc:  # one unreadable summary must not hide the others
            log.warning(f"skipped: {exc}")
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


def write_csv(sweep_dir: Path, rows: List[Dict[str, Any]]) -> Path:
    """``<sweep_dir>/sweep_summary.csv`` (atomically)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else (round(r[k], 4) if isinstance(r[k], float) else r[k]))
                    for k in COLUMNS})
    path = Path(sweep_dir) / CSV_NAME
    write_text(path, buf.getvalue(), what=f"the sweep summary {path}")
    return path
