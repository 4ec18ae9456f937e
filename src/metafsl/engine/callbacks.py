"""What a run tells the outside world while it works: the callback interface of the engine.

The engine never prints.  A training or an evaluation calls the methods of the callbacks it was
given (``metafsl.api.train(cfg, callbacks=[...])``); the console progress bars and the experiment
loggers (csv, TensorBoard, MLflow, W&B) of ``metafsl.reporting`` implement them, and a library
user may pass none (a silent run) or their own.  One-line notices (a resumed run, a rebuilt
cache) go through the standard ``logging`` module (logger ``metafsl``), which the CLI shows on
the console; that is the usual way for a library to speak, and needs no plumbing through the
data loaders.

Every method has a no-op default: a callback implements only what it needs.  Callbacks must not
raise for a logging problem they can survive; ``CallbackList`` passes each call to every
callback in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence


@dataclass
class RunInfo:
    """The run a training is about to work on."""

    run_dir: Path
    #: the resolved run config (plain dict)
    config: Dict[str, Any]
    #: the iteration training starts from (0, or a resumed run's checkpoint) and the planned total
    start_iteration: int = 0
    iterations: int = 0
    #: the command-line overrides that made this run (a sweep job's parameters)
    overrides: List[str] = field(default_factory=list)
    #: the sweep dir when the run is one job of ``metafsl sweep`` (None otherwise)
    sweep_dir: Optional[Path] = None
    #: the last validation accuracy of a resumed run (None before the first validation)
    last_val: Optional[float] = None


@dataclass
class TestInfo:
    """A test of a run's checkpoint that is about to run (``metafsl test``)."""

    __test__ = False  # not a pytest test class

    run_dir: Path
    #: best | last, and the iteration that checkpoint holds
    checkpoint: str
    iteration: int
    #: the resolved config it is tested with (the run's own plus the user's overrides)
    config: Dict[str, Any]
    #: a test protocol's name (e.g. lake20), "" for episodes
    protocol: str = ""


class Callback:
    """Events of a training and of evaluations; override what you need."""

    def on_run_start(self, run: RunInfo) -> None:
        """A training was checked and is about to load its data and build its learner."""

    def on_train_start(self, run: RunInfo) -> None:
        """Training is about to run its first (or first resumed) iteration."""

    def on_metrics(self, record: Dict[str, Any]) -> None:
        """A row was appended to ``metrics.jsonl`` (``split``: train, val, resume, diverged)."""

    def on_event(self, event: str, iteration: int) -> None:
        """A named point of the run (``metafsl.engine.hooks`` lists them)."""

    def on_train_end(self, summary: Any, run_dir: Path) -> None:
        """The run finished; its ``summary`` (a ``RunSummary``) is written next (show it now:
        a failed write then loses nothing shown)."""

    def on_train_stop(self) -> None:
        """Training stopped, finished or not (close bars and files; always called)."""

    def on_test_start(self, test: TestInfo) -> None:
        """A test of a saved checkpoint begins."""

    def on_test_end(self, test: TestInfo, record: Dict[str, Any]) -> None:
        """The test's record, before it is written to the run dir."""

    def on_class_report(self, report: Any) -> None:
        """The per-class report of a test on a dataset with named classes (a
        ``metafsl.engine.metrics.ClassReport``), before ``on_test_end`` (``metafsl test``) or
        ``on_train_end`` (a training's final test) and before it is written."""

    def on_eval_start(self, description: str, episodes: int) -> None:
        """An evaluation of ``episodes`` episodes begins."""

    def on_eval_advance(self, episodes: int) -> None:
        """``episodes`` more episodes were scored."""

    def on_eval_end(self) -> None:
        """The evaluation ended (finished or not)."""


class CallbackList(Callback):
    """Several callbacks as one; each call goes to each callback in order."""

    def __init__(self, callbacks: Optional[Iterable[Callback]] = None):
        self.callbacks: List[Callback] = list(callbacks or [])

    def __iter__(self):
        return iter(self.callbacks)

    def _each(self, method: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, method)(*args)

    def on_run_start(self, run: RunInfo) -> None:
        self._each("on_run_start", run)

    def on_train_start(self, run: RunInfo) -> None:
        self._each("on_train_start", run)

    def on_metrics(self, record: Dict[str, Any]) -> None:
        self._each("on_metrics", record)

    def on_event(self, event: str, iteration: int) -> None:
        self._each("on_event", event, iteration)

    def on_train_end(self, summary: Any, run_dir: Path) -> None:
        self._each("on_train_end", summary, run_dir)

    def on_train_stop(self) -> None:
        self._each("on_train_stop")

    def on_test_start(self, test: TestInfo) -> None:
        self._each("on_test_start", test)

    def on_test_end(self, test: TestInfo, record: Dict[str, Any]) -> None:
        self._each("on_test_end", test, record)

    def on_class_report(self, report: Any) -> None:
        self._each("on_class_report", report)

    def on_eval_start(self, description: str, episodes: int) -> None:
        self._each("on_eval_start", description, episodes)

    def on_eval_advance(self, episodes: int) -> None:
        self._each("on_eval_advance", episodes)

    def on_eval_end(self) -> None:
        self._each("on_eval_end")


def as_list(callbacks: Optional[Sequence[Callback]]) -> CallbackList:
    """``callbacks`` as one ``CallbackList`` (an existing one is returned as it is)."""
    if isinstance(callbacks, CallbackList):
        return callbacks
    return CallbackList(callbacks)
