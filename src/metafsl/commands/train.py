"""`metafsl train`: meta-train, validate, checkpoint, test; print the results table."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Dict

from metafsl.engine.train import train
from metafsl.errors import UserError
from metafsl.reporting import console as out

#: scheduler arguments counted in iterations, scaled with ``budget``
_SCHEDULE_KEYS = ("step_size", "T_max", "total_iters", "total_steps", "milestones", "T_0")


def _scale(value, budget: float):
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(1, int(math.ceil(value * budget)))
    if isinstance(value, list):
        return [_scale(v, budget) for v in value]
    return value


def _scale_schedule(node, budget: float):
    if isinstance(node, dict):
        return {k: (_scale(v, budget) if k in _SCHEDULE_KEYS else _scale_schedule(v, budget))
                for k, v in node.items()}
    return node


def apply_budget(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``budget=<fraction>``: scale iterations, the validation and log cadence and the LR-schedule
    steps, for a quick approximate run of a preset (recorded in summary.json)."""
    budget = float(cfg.get("budget", 1.0))
    if not budget > 0:
        raise UserError(f"budget must be a positive fraction of the preset's iterations (got {budget}).")
    if budget == 1.0:
        return cfg
    cfg = copy.deepcopy(cfg)
    tr = cfg["trainer"]
    tr["iterations"] = _scale(int(tr["iterations"]), budget)
    for key in ("val_every", "log_every"):
        tr[key] = min(_scale(int(tr[key]), budget), tr["iterations"])
    if tr.get("scheduler"):
        tr["scheduler"] = _scale_schedule(tr["scheduler"], budget)
    return cfg


def check_logger(cfg: Dict[str, Any]) -> None:
    logger = cfg.get("logger", "none")
    if logger not in ("none", "tensorboard"):
        raise UserError(f"Unknown logger '{logger}'; choose one of: none, tensorboard.")
    if logger == "tensorboard":
        try:
            import tensorboard  # noqa: F401, PLC0415
        except ImportError:
            raise UserError("logger=tensorboard needs the tensorboard package (pip install tensorboard); "
                            "metrics.jsonl is written either way.") from None


def train_command(cfg: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    check_logger(cfg)
    cfg = apply_budget(cfg)
    budget = float(cfg.get("budget", 1.0))
    note = f"  [yellow](budget={budget:g}: {cfg['trainer']['iterations']} iterations, approximate)[/]" \
        if budget != 1.0 else ""
    out.info(f"[bold]metafsl train[/] {cfg['algo']['name']} · {cfg['backbone']['name']} · "
             f"{cfg['dataset']['name']} · {cfg['episode']['name']}  →  {run_dir}{note}")
    summary = train(cfg, run_dir)
    if budget != 1.0:
        from metafsl.engine.run_dir import SUMMARY, write_json  # noqa: PLC0415

        summary["budget"] = budget
        write_json(Path(run_dir) / SUMMARY, summary)
    write_artifacts(cfg, run_dir)
    print_summary(summary, run_dir)
    return summary


def write_artifacts(cfg: Dict[str, Any], run_dir: Path) -> None:
    """curves.png always; TensorBoard event files with logger=tensorboard (from metrics.jsonl)."""
    from metafsl.reporting.plots import plot_curves  # noqa: PLC0415

    try:
        plot_curves(run_dir, f"{cfg['algo']['name']} · {cfg['dataset']['name']} · {cfg['episode']['name']}")
    except Exception as exc:  # a figure must never cost the user a finished run
        out.info(f"[yellow]warning:[/] could not draw curves.png ({exc.__class__.__name__}: {exc}).")
    if cfg.get("logger") == "tensorboard":
        from metafsl.reporting.tensorboard import export_metrics  # noqa: PLC0415

        export_metrics(run_dir)


def print_summary(summary: Dict[str, Any], run_dir: Path) -> None:
    ep = summary["episode"]["test"]
    rows = [["algorithm", summary["algo"]], ["backbone", summary["backbone"]],
            ["dataset", summary["dataset"]], ["test episode", f"{ep['n_way']}-way {ep['n_shot']}-shot"],
            ["iterations", summary["train"]["iterations"]],
            ["train time", f"{summary['train']['seconds']:.1f} s"],
            ["best val acc (%)", out.fmt_acc(summary["val"]["best_acc"])]]
    if summary.get("budget", 1.0) != 1.0:
        rows.append(["budget", f"{summary['budget']:g} of the preset's iterations (approximate)"])
    if "untrained" in summary:
        u = summary["untrained"]
        rows.append(["untrained test acc (%)", out.fmt_acc(u["acc"], u["ci95"])])
    if "test" in summary:
        t = summary["test"]
        rows.append([f"test acc (%), {t['episodes']} episodes", out.fmt_acc(t["acc"], t["ci95"])])
    rows.append(["run dir", str(run_dir)])
    out.table("Results", ["", "value"], rows)
