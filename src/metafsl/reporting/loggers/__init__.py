"""Experiment loggers (``logger=csv``, ``tensorboard``, ``mlflow``, ``wandb``; several at once with
``logger=[csv,mlflow]``): callbacks of the engine (``metafsl.engine.callbacks``), built from the
run config's ``logger`` node, one option file per logger in ``conf/logger/``.  A logger's
package is imported when the logger is built, before any work: a missing one is one sentence.

``metrics.jsonl`` stays the record of truth; the csv and TensorBoard loggers are written from it
when training stops (so a resumed run's files never hold the iterations it rolled back).  MLflow
and W&B receive each row as it is written (live), and a resumed run continues the same MLflow
or W&B run (its id is kept in the run dir).  A tracker that fails mid-run costs a warning, never
the run.
"""
from __future__ import annotations

from typing import Any, Dict, List

from metafsl.engine.callbacks import Callback
from metafsl.reporting.loggers.base import CurvesFigure


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
