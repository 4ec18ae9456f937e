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

import csv
import io
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from metafsl.arguments import split
from metafsl.engine.callbacks import Callback, RunInfo
from metafsl.engine.run_dir import METRICS, MetricsLog, write_text
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


# ----------------------------------------------------------------------------- live trackers
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


class MLflowLogger(_Tracker):
    """MLflow tracking: one MLflow run per metafsl run (its run id kept in ``<run>/mlflow_run_id``,
    so a resumed run continues it), train/val metrics live at step = iteration, the final test
    accuracy, the run's options and overrides as parameters, ``curves.png`` as an artifact.

    Arguments:
        tracking_uri: where runs are stored; null: MLflow's local file store
            ``file:<paths.output_dir>/mlruns`` (made absolute; a plain path is a file store too).
            ``mlflow ui --backend-store-uri <that dir>`` opens it (the UI needs the full ``mlflow``
            package; MLflow 3 serves a file store with ``MLFLOW_ALLOW_FILE_STORE=true``).
        experiment_name: null: ``metafsl``, or for a job of ``metafsl sweep`` the sweep dir's name
            (a sweep is one experiment, each job one run with its overrides as parameters).
        run_name: null: the run dir's name.

    Example:
        ``metafsl train logger=mlflow`` then
        ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri outputs/mlruns``.
    """

    name = "mlflow"
    RUN_ID_FILE = "mlflow_run_id"

    def __init__(self, tracking_uri: Optional[str] = None, experiment_name: Optional[str] = None,
                 run_name: Optional[str] = None):
        require("mlflow", "mlflow", "mlflow-skinny")
        self.tracking_uri, self.experiment_name, self.run_name = tracking_uri, experiment_name, run_name
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.seen: set = set()

    # ------------------------------------------------------------------ events
    def on_train_start(self, run: RunInfo) -> None:
        self._guard(self._open, run)

    def on_metrics(self, record: Dict[str, Any]) -> None:
        if self.run_id is not None:
            self._guard(self._log, int(record.get("iteration", 0)), scalars_of(record))

    def on_train_stop(self) -> None:
        if self.run_id is not None:
            self._guard(self.client.set_terminated, self.run_id, stop_status())

    def on_train_end(self, summary: Any, run_dir: Path) -> None:
        """The final test (logged to the run just ended: MLflow allows it) and the curves."""
        if self.run_id is not None:
            self._guard(self._log_results, summary, Path(run_dir))

    def close(self) -> None:
        self.run_id = None

    # ------------------------------------------------------------------ work
    def uri(self, run: RunInfo) -> str:
        """The tracking URI: a file store's path made absolute (the run may be read from elsewhere)."""
        uri = self.tracking_uri or str(Path(run.config["paths"]["output_dir"]) / "mlruns")
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri) and not uri.startswith("file:"):
            return uri  # sqlite:///..., http://..., databricks
        path = re.sub(r"^file:(//)?", "", uri)  # file:/abs, file:///abs, file:rel, or a plain path
        return Path(os.path.expanduser(path)).resolve().as_uri()

    def _open(self, run: RunInfo) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.uri(run)
        if uri.startswith("file:"):  # MLflow 3 keeps its file store behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        id_file = Path(run.run_dir) / self.RUN_ID_FILE
        previous = self._previous(id_file)
        if previous is not None:  # a resumed run: the same MLflow run, running again
            self.run_id = previous.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.seen = {(key, m.step, m.value) for key in previous.data.metrics
                         for m in self.client.get_metric_history(self.run_id, key)}
            logged = dict(previous.data.params)
        else:
            experiment = self._experiment(uri, self._experiment_name(run))
            created = self.client.create_run(experiment, run_name=self.run_name or Path(run.run_dir).name,
                                             tags={"metafsl.run_dir": str(Path(run.run_dir).resolve())})
            self.run_id, self.seen, logged = created.info.run_id, set(), {}
            write_text(id_file, self.run_id + "\n")
        # parameters new to the run (MLflow's are write-once: a resume's changed settings are in
        # metrics.jsonl's resume row), then the rows a resumed run has that the tracker lacks
        params = [Param(k, v[:500]) for k, v in run_params(run).items() if k not in logged]
        self._log(None, {}, params)
        for record in MetricsLog(Path(run.run_dir) / METRICS).read():
            self._log(int(record.get("iteration", 0)), scalars_of(record))

    def _previous(self, id_file: Path) -> Any:
        """The MLflow run this run dir logged to before (None: none, or not in this store)."""
        if not id_file.is_file():
            return None
        try:
            previous = self.client.get_run(id_file.read_text().strip())
        except Exception:  # another store, a deleted run: start a new one
            return None
        return previous if previous.info.lifecycle_stage == "active" else None

    def _experiment_name(self, run: RunInfo) -> str:
        if self.experiment_name:
            return self.experiment_name
        return Path(run.sweep_dir).name if run.sweep_dir is not None else "metafsl"

    def _experiment(self, uri: str, name: str) -> str:
        """The id of experiment ``name``, created if new (the jobs of a parallel sweep create it
        once: under a lock beside a file store)."""
        from filelock import FileLock

        def get_or_create() -> str:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                if found.lifecycle_stage != "active":
                    self.client.restore_experiment(found.experiment_id)
                return found.experiment_id
            return self.client.create_experiment(name)

        if not uri.startswith("file:"):
            try:
                return get_or_create()
            except Exception:  # another process created it meanwhile
                return self.client.get_experiment_by_name(name).experiment_id
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        store = Path(url2pathname(urlparse(uri).path))
        with FileLock(str(store.parent / f".{store.name}.lock")):
            return get_or_create()

    def _log(self, step: Optional[int], metrics: Dict[str, float], params: Any = ()) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = [Metric(k, v, now, step) for k, v in metrics.items() if (k, step, v) not in self.seen]
        self.seen.update((m.key, step, m.value) for m in fresh)
        if fresh or params:
            self.client.log_batch(self.run_id, metrics=fresh, params=list(params))

    def _log_results(self, summary: Any, run_dir: Path) -> None:
        step = int((summary.train or {}).get("iterations", 0))
        test, val = summary.test or {}, summary.val or {}
        results = {"test/acc": test.get("acc"), "test/ci95": test.get("ci95"),
                   "val/best_acc": val.get("best_acc")}
        self._log(step, {k: float(v) for k, v in results.items() if isinstance(v, (int, float))})
        if (run_dir / "curves.png").is_file():
            self.client.log_artifact(self.run_id, str(run_dir / "curves.png"))


class WandbLogger(_Tracker):
    """Weights & Biases: one W&B run per metafsl run (its id kept in ``<run>/wandb_run_id``, so a
    resumed run continues it), the run config as its config, train/val metrics live at step =
    iteration, the final test accuracy in its summary.  Offline by default: nothing leaves the
    machine; the run lies in ``<run>/wandb/offline-run-*`` and ``wandb sync <that dir>`` uploads
    it later.  Silent unless ``verbose=true``.

    Arguments:
        project: the W&B project.
        entity: the W&B team or user (null: your default entity, when synced).
        group: null: for a job of ``metafsl sweep``, the sweep dir's name (no group otherwise).
        mode: offline (files only), online (needs a login and the network), or disabled.

    Example:
        ``metafsl train logger=wandb`` then ``wandb sync outputs/train/<run>/wandb/offline-run-*``.
    """

    name = "wandb"
    RUN_ID_FILE = "wandb_run_id"
    MODES = ("offline", "online", "disabled")

    def __init__(self, project: str = "metafsl", entity: Optional[str] = None,
                 group: Optional[str] = None, mode: str = "offline"):
        require("wandb", "wandb")
        if mode not in self.MODES:
            raise UserError(f"logger.wandb.mode must be one of {', '.join(self.MODES)} (got {mode!r}).")
        self.project, self.entity, self.group, self.mode = project, entity, group, mode
        self.run: Any = None

    def on_train_start(self, run: RunInfo) -> None:
        self._guard(self._open, run)

    def on_metrics(self, record: Dict[str, Any]) -> None:
        scalars = scalars_of(record)
        if self.run is not None and scalars:
            self._guard(self.run.log, scalars, int(record.get("iteration", 0)))

    def on_train_stop(self) -> None:
        """A stopped training ends its W&B run now; a finished one at ``on_train_end``, with its
        test result (W&B's own exit hook ends it if the test never comes)."""
        status = stop_status()
        if self.run is not None and status != "FINISHED":
            self._guard(self.run.finish, 1)
            self.run = None

    def on_train_end(self, summary: Any, run_dir: Path) -> None:
        if self.run is not None:
            self._guard(self._finish, summary)

    def close(self) -> None:
        self.run = None

    def _open(self, run: RunInfo) -> None:
        if self.mode == "offline":  # W&B's own error reports would be network traffic
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        import wandb

        verbose = bool(run.config.get("verbose"))
        run_dir = Path(run.run_dir)
        id_file = run_dir / self.RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if not run_id:
            from wandb.sdk.lib.runid import generate_id

            run_id = generate_id()
            write_text(id_file, run_id + "\n")
        group = self.group or (Path(run.sweep_dir).name if run.sweep_dir is not None else None)
        settings = wandb.Settings(silent=not verbose, quiet=not verbose, show_info=verbose,
                                  show_warnings=verbose, console="off")
        self.run = wandb.init(project=self.project, entity=self.entity, group=group,
                              name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
                              mode=self.mode, config=run.config, tags=list(run.config.get("tags") or []),
                              settings=settings)

    def _finish(self, summary: Any) -> None:
        test, val = summary.test or {}, summary.val or {}
        for key, value in {"test/acc": test.get("acc"), "test/ci95": test.get("ci95"),
                           "val/best_acc": val.get("best_acc")}.items():
            if isinstance(value, (int, float)):
                self.run.summary[key] = value
        self.run.finish(0)
        self.run = None


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
