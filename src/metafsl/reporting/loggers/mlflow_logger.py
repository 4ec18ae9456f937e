"""``logger=mlflow``: MLflow tracking, live."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Optional

from metafsl.engine.callbacks import RunInfo
from metafsl.engine.run_dir import METRICS, MetricsLog, write_text
from metafsl.reporting.loggers.base import (
    _Tracker,
    require,
    run_params,
    scalars_of,
    stop_status,
)


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
