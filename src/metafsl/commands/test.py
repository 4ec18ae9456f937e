"""`metafsl test run=<dir>`: evaluate a run's checkpoint with its saved config plus overrides."""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any, Dict, List

from omegaconf import DictConfig, OmegaConf

from metafsl.engine import checkpoint
from metafsl.engine.components import build
from metafsl.engine.run_dir import BEST, LAST, RESULT, SUMMARY, read_json, write_json
from metafsl.engine.train import summary_base, test_split
from metafsl.errors import UserError
from metafsl.reporting import console as out

#: keys that steer the test command itself, never copied into the run's config
_OWN_KEYS = {"run", "checkpoint", "verbose", "protocol"}


def effective_config(saved: Dict[str, Any], fresh: DictConfig, overrides: List[str]) -> Dict[str, Any]:
    """The saved run config with every key the user overrode replaced by its fresh value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: PLC0415

    cfg = OmegaConf.create(saved)
    for ov in OverridesParser.create().parse_overrides(overrides):
        key = ov.key_or_group
        if ov.is_delete() or key.split(".")[0] in _OWN_KEYS or key.startswith("hydra"):
            continue
        value = OmegaConf.select(fresh, key)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return OmegaConf.to_container(cfg, resolve=True)


def test_command(fresh: DictConfig, overrides: List[str], out_dir: Path) -> Dict[str, Any]:
    run = Path(fresh.run)
    which = fresh.get("checkpoint", "best")
    if which not in ("best", "last"):
        raise UserError(f"checkpoint must be best or last, not '{which}'.")
    path = run / (BEST if which == "best" else LAST)
    ck = checkpoint.load(path)
    cfg = effective_config(ck["config"], fresh, overrides)
    # the learner is built as trained (a fixed head's size comes from the training episodes);
    # test episodes it cannot classify are then refused by its check_episode, in one sentence
    cfg["episode"]["train"] = ck["config"]["episode"]["train"]
    comp = build(cfg)
    checkpoint.load_weights(comp.algorithm, ck["model"], path)
    if fresh.get("protocol") is not None:  # e.g. protocol=lake20: not sampled episodes
        return protocol_test(OmegaConf.to_container(fresh.protocol, resolve=True), comp, cfg, ck, which,
                             run, overrides, out_dir)
    spec = cfg["episode"]["test"]
    out.info(f"[bold]metafsl test[/] {run} ({which} checkpoint, iteration {ck['iteration']}) on "
             f"{cfg['dataset']['name']} {spec['n_way']}-way {spec['n_shot']}-shot")
    t0 = time.perf_counter()
    with out.simple_progress() as progress:
        res = test_split(comp, cfg, progress)
    record = record_test(run, ck, which, cfg, overrides, out_dir, t0,
                         {**res, "episode": cfg["episode"]["test"], "eval_seed": cfg["eval"]["seed"]})
    out.table("Test", ["run", "dataset", "episode", "episodes", "test acc (%)"],
              [[str(run), record["dataset"], f"{spec['n_way']}w{spec['n_shot']}s", res["episodes"],
                out.fmt_acc(res["acc"], res["ci95"])]])
    return record


def protocol_test(proto: Dict[str, Any], comp, cfg: Dict[str, Any], ck: Dict[str, Any], which: str, run: Path,
                  overrides: List[str], out_dir: Path) -> Dict[str, Any]:
    """Score a checkpoint with a test protocol (``engine.protocols``) and record it like a test."""
    from metafsl.engine.protocols import run_protocol  # noqa: PLC0415

    out.info(f"[bold]metafsl test[/] {run} ({which} checkpoint, iteration {ck['iteration']}), "
             f"protocol {proto.get('name')}")
    t0 = time.perf_counter()
    res = run_protocol(proto, comp, cfg)
    record = record_test(run, ck, which, cfg, overrides, out_dir, t0, res)
    rows = [[name, f"{err:.1f}"] for name, err in res["per_run_error"].items()]
    rows.append([f"all ({res['trials']} trials)", f"{res['error']:.2f}"])
    out.table(f"{proto.get('name')}: one-shot classification error (%)", ["run", "error (%)"], rows,
              justify_right=["error (%)"])
    return record


def record_test(run: Path, ck: Dict[str, Any], which: str, cfg: Dict[str, Any], overrides: List[str],
                out_dir: Path, t0: float, result: Dict[str, Any]) -> Dict[str, Any]:
    """Append a test result to the run's summary.json ("tests") and to this test's own dir."""
    record = {**result, "seconds": round(time.perf_counter() - t0, 2), "checkpoint": which,
              "iteration": ck["iteration"], "dataset": cfg["dataset"]["name"],
              "overrides": [o for o in overrides if not o.startswith("run=")],
              "time": _dt.datetime.now().isoformat(timespec="seconds")}
    summary_path = run / SUMMARY
    summary = read_json(summary_path) if summary_path.exists() else summary_base(ck["config"])
    summary.setdefault("tests", []).append(record)
    write_json(summary_path, summary)
    write_json(out_dir / RESULT, record)
    return record
