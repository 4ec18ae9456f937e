"""What a user sees of a run: the header line, the results tables, the figures beside them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from metafsl.reporting import console as out


def train_header(cfg: Dict[str, Any], run_dir: Path) -> None:
    budget = float(cfg.get("budget", 1.0))
    note = f"  [yellow](budget={budget:g}: {cfg['trainer']['iterations']} iterations, approximate)[/]" \
        if budget != 1.0 else ""
    out.info(f"[bold]metafsl train[/] {cfg['algo']['name']} · {cfg['backbone']['name']} · "
             f"{cfg['dataset']['name']} · {cfg['episode']['name']}  →  {run_dir}{note}")


def print_train_summary(summary, run_dir: Path) -> None:
    ep = summary.episode["test"]
    rows = [["algorithm", summary.algo], ["backbone", summary.backbone],
            ["dataset", summary.dataset], ["test episode", f"{ep['n_way']}-way {ep['n_shot']}-shot"],
            ["iterations", summary.train["iterations"]],
            ["train time", f"{summary.train['seconds']:.1f} s"],
            ["best val acc (%)", out.fmt_acc(summary.best_acc)]]
    if summary.budget != 1.0:
        rows.append(["budget", f"{summary.budget:g} of the preset's iterations (approximate)"])
    if summary.untrained:
        u = summary.untrained
        rows.append(["untrained test acc (%)", out.fmt_acc(u["acc"], u["ci95"])])
    if summary.test:
        t = summary.test
        rows.append([f"test acc (%), {t['episodes']} episodes", out.fmt_acc(t["acc"], t["ci95"])])
    rows.append(["run dir", str(run_dir)])
    out.table("Results", ["", "value"], rows)


def write_artifacts(cfg: Dict[str, Any], run_dir: Path) -> None:
    """curves.png always; TensorBoard event files with logger=tensorboard (from metrics.jsonl)."""
    from metafsl.reporting.plots import plot_curves

    try:
        plot_curves(run_dir, f"{cfg['algo']['name']} · {cfg['dataset']['name']} · {cfg['episode']['name']}")
    except Exception as exc:  # a figure must never cost the user a finished run
        out.info(f"[yellow]warning:[/] could not draw curves.png ({exc.__class__.__name__}: {exc}).")
    if cfg.get("logger") == "tensorboard":
        from metafsl.reporting.tensorboard import export_metrics

        export_metrics(run_dir)


def test_header(run: Path, which: str, iteration: int, cfg: Dict[str, Any], protocol: str = "") -> None:
    spec = cfg["episode"]["test"]
    what = f"protocol {protocol}" if protocol else \
        f"on {cfg['dataset']['name']} {spec['n_way']}-way {spec['n_shot']}-shot"
    out.info(f"[bold]metafsl test[/] {run} ({which} checkpoint, iteration {iteration}) {what}")


def print_test(run: Path, record: Dict[str, Any]) -> None:
    if "per_run_error" in record:  # a test protocol (e.g. lake20)
        rows = [[name, f"{err:.1f}"] for name, err in record["per_run_error"].items()]
        rows.append([f"all ({record['trials']} trials)", f"{record['error']:.2f}"])
        out.table(f"{record.get('protocol', 'protocol')}: one-shot classification error (%)",
                  ["run", "error (%)"], rows, justify_right=["error (%)"])
        return
    spec = record["episode"]
    out.table("Test", ["run", "dataset", "episode", "episodes", "test acc (%)"],
              [[str(run), record["dataset"], f"{spec['n_way']}w{spec['n_shot']}s", record["episodes"],
                out.fmt_acc(record["acc"], record["ci95"])]])
