"""`metafsl train`: meta-train, validate, checkpoint, test; print the results table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from metafsl.engine.train import train
from metafsl.reporting import console as out


def train_command(cfg: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    out.info(f"[bold]metafsl train[/] {cfg['algo']['name']} · {cfg['backbone']['name']} · "
             f"{cfg['dataset']['name']} · {cfg['episode']['name']}  →  {run_dir}")
    summary = train(cfg, run_dir)
    print_summary(summary, run_dir)
    return summary


def print_summary(summary: Dict[str, Any], run_dir: Path) -> None:
    ep = summary["episode"]["test"]
    rows = [["algorithm", summary["algo"]], ["backbone", summary["backbone"]],
            ["dataset", summary["dataset"]], ["test episode", f"{ep['n_way']}-way {ep['n_shot']}-shot"],
            ["iterations", summary["train"]["iterations"]],
            ["train time", f"{summary['train']['seconds']:.1f} s"],
            ["best val acc (%)", out.fmt_acc(summary["val"]["best_acc"])]]
    if "untrained" in summary:
        u = summary["untrained"]
        rows.append(["untrained test acc (%)", out.fmt_acc(u["acc"], u["ci95"])])
    if "test" in summary:
        t = summary["test"]
        rows.append([f"test acc (%), {t['episodes']} episodes", out.fmt_acc(t["acc"], t["ci95"])])
    rows.append(["run dir", str(run_dir)])
    out.table("Results", ["", "value"], rows)
