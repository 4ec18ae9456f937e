"""``logger=wandb``: Weights & Biases, offline by default, live."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

from metafsl.engine.callbacks import RunInfo
from metafsl.engine.run_dir import write_text
from metafsl.errors import UserError
from metafsl.reporting.loggers.base import (
    _Tracker,
    require,
    scalars_of,
    stop_status,
)


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
