"""Loggers written from ``metrics.jsonl`` when training stops: ``logger=csv`` and
``logger=tensorboard`` (a resumed run's files never hold the iterations it rolled back)."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any, Dict, List

from metafsl.engine.callbacks import Callback, RunInfo
from metafsl.engine.run_dir import METRICS, MetricsLog, write_text
from metafsl.reporting.loggers.base import SCALARS, require


class _FromMetrics(Callback):
    """A logger written from ``metrics.jsonl`` whenever training stops."""

    def on_train_start(self, run: RunInfo) -> None:
        self.run_dir = Path(run.run_dir)

    def on_train_stop(self) -> None:
        if getattr(self, "run_dir", None) is not None:
            self.export(MetricsLog(self.run_dir / METRICS).read())

    def export(self, records: List[Dict[str, Any]]) -> None:
        raise NotImplementedError


class CSVLogger(_FromMetrics):
    """``<run>/<filename>``: one row per train/val record of metrics.jsonl (iteration, split,
    loss, acc, ci95, lr, seconds)."""

    def __init__(self, filename: str = "metrics.csv"):
        self.filename = filename

    def export(self, records: List[Dict[str, Any]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["iteration", "split", *SCALARS, "seconds"], extrasaction="ignore")
        w.writeheader()
        w.writerows(r for r in records if r.get("split") in ("train", "val"))
        write_text(self.run_dir / self.filename, buf.getvalue())


class TensorBoardLogger(_FromMetrics):
    """TensorBoard event files in ``<run>/<folder>/`` (``tensorboard --logdir <run>``)."""

    def __init__(self, folder: str = "tensorboard"):
        self.folder = folder
        require("tensorboard", "tensorboard")

    def export(self, records: List[Dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.run_dir / self.folder
        if folder.exists():
            shutil.rmtree(folder)
        writer = SummaryWriter(log_dir=str(folder))
        try:
            for rec in records:
                split, step = rec.get("split", "train"), int(rec.get("iteration", 0))
                for key in SCALARS:
                    if isinstance(rec.get(key), (int, float)):
                        writer.add_scalar(f"{split}/{key}", rec[key], step)
        finally:
            writer.close()
