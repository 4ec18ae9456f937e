"""What a person sees of a run on the console, as a callback of the engine
(``metafsl.engine.callbacks``): the header line, a training progress bar (loss, accuracy, last
validation), a transient bar per evaluation, and the results tables, shown before they are
written."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from metafsl.engine.callbacks import Callback, RunInfo, TestInfo
from metafsl.engine.summary import backbone_label, inference_label
from metafsl.reporting import console

#: the macro scores of a test record (``macro_<key>``), as the tables name them
MACRO_LABELS = (("precision", "precision"), ("recall", "recall"), ("f1", "F1"))


class ConsoleReport(Callback):
    """What ``metafsl train``, ``test``, ``reproduce`` and ``demo`` show while they work."""

    def __init__(self) -> None:
        self.train_bar = self.eval_bar = None
        self.train_task = self.eval_task = None
        self.class_report = None  # shown after the test's table

    # ------------------------------------------------------------------ training
    def on_run_start(self, run: RunInfo) -> None:
        cfg = run.config
        budget = float(cfg.get("budget", 1.0))
        note = f"  [yellow](budget={budget:g}: {cfg['trainer']['iterations']} iterations, approximate)[/]" \
            if budget != 1.0 else ""
        console.info(f"[bold]metafsl train[/] {cfg['algo']['name']} · {backbone_label(cfg['backbone'])} · "
                     f"{cfg['dataset']['name']} · {cfg['episode']['name']}  →  {run.run_dir}{note}")

    def on_train_start(self, run: RunInfo) -> None:
        self.train_bar = console.training_progress()
        self.train_bar.start()
        self.train_task = self.train_bar.add_task(
            f"train {run.config['algo']['name']}", total=run.iterations, completed=run.start_iteration,
            loss="-", acc="-", val=console.fmt(run.last_val, 2))

    def on_metrics(self, record: Dict[str, Any]) -> None:
        if self.train_bar is None:
            return
        if record.get("split") == "train":
            self.train_bar.update(self.train_task, loss=console.fmt(record["loss"]),
                                  acc=console.fmt(record["acc"], 1))
        elif record.get("split") == "val":
            self.train_bar.update(self.train_task, val=console.fmt(record["acc"], 2))
        elif record.get("split") == "plan":  # trainer.fit_to_budget moved the end
            self.train_bar.update(self.train_task, total=record["iterations"])

    def on_event(self, event: str, iteration: int) -> None:
        if event == "iteration_end" and self.train_bar is not None:
            self.train_bar.update(self.train_task, completed=iteration)

    def on_train_stop(self) -> None:
        if self.train_bar is not None:
            self.train_bar.stop()
        self.train_bar = self.train_task = None

    def on_train_end(self, summary: Any, run_dir: Path) -> None:
        print_train_summary(summary, run_dir)
        self._show_class_report()

    # ------------------------------------------------------------------ tests and evaluations
    def on_test_start(self, test: TestInfo) -> None:
        spec = test.config["episode"]["test"]
        what = f"protocol {test.protocol}" if test.protocol else \
            f"on {test.config['dataset']['name']} {spec['n_way']}-way {spec['n_shot']}-shot"
        console.info(f"[bold]metafsl test[/] {test.run_dir} ({test.checkpoint} checkpoint, "
                     f"iteration {test.iteration}) {what}")

    def on_test_end(self, test: TestInfo, record: Dict[str, Any]) -> None:
        print_test(test.run_dir, record)
        self._show_class_report()

    def on_class_report(self, report: Any) -> None:
        self.class_report = report

    def _show_class_report(self) -> None:
        if self.class_report is not None:
            from metafsl.reporting import per_class

            per_class.show(self.class_report)
        self.class_report = None

    def on_eval_start(self, description: str, episodes: int) -> None:
        if self.train_bar is not None:  # validation inside a training: the training bar says enough
            return
        self.eval_bar = console.simple_progress()
        self.eval_bar.start()
        self.eval_task = self.eval_bar.add_task(description, total=episodes)

    def on_eval_advance(self, episodes: int) -> None:
        if self.eval_bar is not None:
            self.eval_bar.advance(self.eval_task, episodes)

    def on_eval_end(self) -> None:
        if self.eval_bar is not None:
            self.eval_bar.stop()
        self.eval_bar = self.eval_task = None


def print_train_summary(summary, run_dir: Path) -> None:
    ep = summary.episode["test"]
    rows = [["algorithm", summary.algo], ["backbone", summary.backbone],
            ["dataset", summary.dataset], ["test episode", f"{ep['n_way']}-way {ep['n_shot']}-shot"],
            ["iterations", summary.train["iterations"]],
            ["train time", f"{summary.train['seconds']:.1f} s"],
            ["best val acc (%)", console.fmt_acc(summary.best_acc)]]
    if summary.budget != 1.0:
        rows.append(["budget", f"{summary.budget:g} of the preset's iterations (approximate)"])
    if summary.untrained:
        u = summary.untrained
        rows.append(["untrained test acc (%)", console.fmt_acc(u["acc"], u["ci95"])])
    if summary.test:
        t = summary.test
        rows.append([f"test acc (%), {t['episodes']} episodes", console.fmt_acc(t["acc"], t["ci95"])])
        if t.get("inference") == "transductive":
            rows.append(["test inference", inference_label(t)])
        rows += [[f"test macro {label} (%)", console.fmt_acc(t[f"macro_{key}"], t.get(f"macro_{key}_ci95"))]
                 for key, label in MACRO_LABELS if t.get(f"macro_{key}") is not None]
    rows.append(["run dir", str(run_dir)])
    console.table("Results", ["", "value"], rows)


def print_test(run: Path, record: Dict[str, Any]) -> None:
    if "per_run_error" in record:  # a test protocol (e.g. lake20)
        rows = [[name, f"{err:.1f}"] for name, err in record["per_run_error"].items()]
        # the interval counts runs, not trials (engine.protocols); records from before it have none
        rows.append([f"all ({record['trials']} trials)", console.fmt_acc(record["error"], record.get("ci95"))])
        console.table(f"{record.get('protocol', 'protocol')}: one-shot classification error (%)",
                      ["run", "error (%)"], rows, justify_right=["error (%)"])
        return
    spec = record["episode"]
    console.table("Test", ["run", "dataset", "episode", "inference", "episodes", "test acc (%)"],
                  [[str(run), record["dataset"], f"{spec['n_way']}w{spec['n_shot']}s", inference_label(record),
                    record["episodes"], console.fmt_acc(record["acc"], record["ci95"])]])
    macro = [(f"macro {label} (%)", console.fmt_acc(record[f"macro_{key}"], record.get(f"macro_{key}_ci95")))
             for key, label in MACRO_LABELS if record.get(f"macro_{key}") is not None]
    if macro:  # each episode's average over its classes, then mean ± CI over the episodes
        console.table(f"Test, per-episode macro averages ({record['episodes']} episodes)",
                      [m[0] for m in macro], [[m[1] for m in macro]], justify_right=[m[0] for m in macro])
