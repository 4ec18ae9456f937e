"""What every logger shares: the package check, the run's own figure, and the live trackers'
base (parameters of a run, scalars of a metrics row, how a training stopped, a failure that
costs a warning, never the run)."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from metafsl.arguments import split
from metafsl.engine.callbacks import Callback, RunInfo
from metafsl.errors import UserError

log = logging.getLogger(__name__)
#: rows of metrics.jsonl that carry scalars, and the scalars a logger writes
SCALARS = ("loss", "acc", "ci95", "lr")
SPLITS = ("train", "val")


def require(package: str, logger: str, pip_name: Optional[str] = None) -> Any:
    """Import ``package`` for ``logger=<logger>``, or one sentence naming what to install."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        pip = pip_name or package
        raise UserError(f"logger={logger} needs the {pip} package (pip install {pip}, or the "
                        "metafsl[loggers] extra for every logger); metrics.jsonl is written either "
                        "way.") from None


class CurvesFigure(Callback):
    """``curves.png`` beside every run's metrics (loss and accuracies against iterations)."""

    def on_train_end(self, summary: Any, run_dir: Path) -> None:
        from metafsl.reporting.plots import plot_curves

        cfg = summary
        try:
            plot_curves(run_dir, f"{cfg.algo} · {cfg.dataset} · {(cfg.episode or {}).get('name', '')}")
        except Exception as exc:  # a figure must never cost the user a finished run
            log.warning(f"could not draw curves.png ({exc.__class__.__name__}: {exc})")


#: command-line overrides that are not parameters of a run (where files go, how it is shown, which
#: loggers): conf/common.yaml's hydra.job.config.override_dirname.exclude_keys, plus logger and hydra
NOT_PARAMS = ("paths", "device", "verbose", "resume", "hparams_search", "logger", "hydra")


def run_params(run: RunInfo) -> Dict[str, str]:
    """A run's parameters for an experiment tracker: the options it was built from (algo,
    backbone, dataset, episode, seed) and its command-line overrides (a sweep job's parameters)."""
    cfg = run.config
    params: Dict[str, Any] = {group: (cfg.get(group) or {}).get("name")
                              for group in ("algo", "backbone", "dataset", "episode")}
    params["seed"] = cfg.get("seed")
    for arg in run.overrides:
        pair = None if arg.startswith("~") else split(arg.lstrip("+"))
        if pair is not None and re.split(r"[./@]", pair[0])[0] not in NOT_PARAMS:
            params[pair[0]] = pair[1]
    return {k: str(v) for k, v in params.items() if v is not None}


def scalars_of(record: Dict[str, Any]) -> Dict[str, float]:
    """A train/val row of metrics.jsonl as tracker scalars (``train/loss``, ``val/acc`` ...)."""
    if record.get("split") not in SPLITS:
        return {}
    return {f"{record['split']}/{k}": float(record[k]) for k in SCALARS
            if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)}


def stop_status() -> str:
    """How a training stopped, asked while its ``on_train_stop`` runs (inside the training's
    ``finally``): FINISHED, KILLED (a signal, Ctrl-C) or FAILED (an exception on its way out)."""
    from metafsl.errors import Interrupted

    exc = sys.exc_info()[1]
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, (Interrupted, KeyboardInterrupt, SystemExit)) else "FAILED"


class _Tracker(Callback):
    """A live tracker: a problem of the tracker (a full disk, a server gone) is one warning, then
    the run goes on without it; ``metrics.jsonl`` has every row anyway."""

    name = ""

    def _guard(self, action: Callable[..., Any], *args: Any) -> Any:
        try:
            return action(*args)
        except Exception as exc:
            first = str(exc).strip().split("\n")[0][:300]
            log.warning(f"logger={self.name} stopped logging this run ({exc.__class__.__name__}: "
                        f"{first}); metrics.jsonl has every row.")
            self.close()
            return None

    def close(self) -> None:
        """Forget the tracker's run (after a failure)."""
