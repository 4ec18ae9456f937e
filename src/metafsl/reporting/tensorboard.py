"""``logger=tensorboard``: TensorBoard event files in ``<run>/tensorboard/``, written from
``metrics.jsonl`` (the record of truth) at the end of training, so a resumed run's events
never hold the iterations it rolled back."""
from __future__ import annotations

import shutil
from pathlib import Path

from metafsl.engine.run_dir import METRICS, MetricsLog


def export_metrics(run_dir: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(run_dir) / "tensorboard"
    if folder.exists():
        shutil.rmtree(folder)
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for rec in MetricsLog(Path(run_dir) / METRICS).read():
            split, step = rec.get("split", "train"), int(rec.get("iteration", 0))
            for key in ("loss", "acc", "ci95", "lr"):
                if isinstance(rec.get(key), (int, float)):
                    writer.add_scalar(f"{split}/{key}", rec[key], step)
    finally:
        writer.close()
    return folder
