"""Experiment loggers (``logger=csv``, ``tensorboard``, ``mlflow``, ``wandb``; several at once with
``logger=[csv,mlflow]``): callbacks of the engine (``metafsl.engine.callbacks``), built from the
run config's ``logger`` node, one option file per logger in ``conf/logger/``.

``metrics.jsonl`` stays the record of truth; the csv and TensorBoard loggers are written from it
when training stops (so a resumed run's files never hold the iterations it rolled back).
"""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from metafsl.engine.callbacks import Callback, RunInfo
from metafsl.engine.run_dir import METRICS, MetricsLog, write_text
from metafsl.errors import UserError

#: rows of metrics.jsonl that carry scalars, and the scalars a logger writes
SCALARS = ("loss", "acc", "ci95", "lr")


def require(package: str, logger: str, pip_name: Optional[str] = None) -> Any:
    """Import ``package`` for ``logger=<logger>``, or one sentence naming what to install."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise UserError(f"logger={logger} needs the {pip_name or package} package "
                        f"(pip install {pip_name or package}); metrics.jsonl is written either way.") from None


class CurvesFigure(Callback):
    """``curves.png`` beside every run's metrics (loss and accuracies against iterations)."""

    def on_train_end(self, summary: Any, run_dir: Path) -> None:
        import logging

        from metafsl.reporting.plots import plot_curves

        cfg = summary
        try:
            plot_curves(run_dir, f"{cfg.algo} · {cfg.dataset} · {(cfg.episode or {}).get('name', '')}")
        except Exception as exc:  # a figure must never cost the user a finished run
            logging.getLogger(__name__).warning(f"could not draw curves.png ({exc.__class__.__name__}: {exc})")


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


def loggers(cfg: Dict[str, Any]) -> List[Callback]:
    """The loggers the run config names (``cfg["logger"]``: a dict of name -> option node; runs
    written before loggers were a config group hold ``"none"`` or ``"tensorboard"``)."""
    from metafsl import options

    node = cfg.get("logger")
    if node in (None, "none", {}):
        return []
    if isinstance(node, str):
        node = {node: options.shipped_option("logger", node)[node]}
    return [options.instantiate("logger", dict(spec)) for spec in node.values() if spec]


def run_callbacks(cfg: Dict[str, Any]) -> List[Callback]:
    """What every training reports to besides its caller's callbacks: the config's loggers and
    the run's figure."""
    return [CurvesFigure(), *loggers(cfg)]
