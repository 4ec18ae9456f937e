"""How a training starts in its run dir: fresh, resumed, or not at all.

Decided before anything is written into the run dir (its ``.hydra/`` snapshot included), so a
refused command leaves an existing run byte-identical.  On resume the new config is compared
with the checkpoint's: settings of the schedule (learning rate, iterations, time budget,
validation cadence) are applied and recorded; what defines the model (algorithm, backbone,
dataset, episode shape, seed, optimiser) must not change.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from metafsl.config import flatten
from metafsl.engine import checkpoint
from metafsl.engine.run_dir import LAST, METRICS, SNAPSHOT, SUMMARY
from metafsl.engine.summary import RunSummary
from metafsl.errors import UserError

log = logging.getLogger(__name__)

#: settings a resumed run takes from the new config (recorded in metrics.jsonl)
APPLIED = ("trainer.optimizer.lr", "trainer.iterations", "trainer.max_minutes", "trainer.val_every",
           "trainer.val_episodes", "trainer.log_every", "trainer.checkpoint_every_minutes",
           "trainer.grad_clip", "trainer.fit_to_budget")
#: settings that define the model being trained: a resume that changes them is refused
FIXED = ("algo.", "backbone.", "dataset.", "episode.", "seed", "trainer.meta_batch_size",
         "trainer.optimizer.", "trainer.scheduler")
#: keys under FIXED that may still change (where the files are, how the decode cache checks them;
#: display names)
FREE = ("dataset.root", "dataset.download", "dataset.cache_check", "episode.name", "algo.description",
        "backbone.description")

#: options added since runs were first written, with the value an older run had in effect
ADDED = {"backbone.weights": "none", "backbone.freeze": False, "backbone.lr": None,
         "trainer.fit_to_budget": False}


@dataclass
class StartPlan:
    """How a training starts in its run dir (what ``plan`` decided)."""

    #: new | resume | finished
    mode: str
    checkpoint: Optional[Dict[str, Any]] = None
    #: applied changes: key -> (checkpoint's value, new value)
    changes: Dict[str, Tuple[Any, Any]] = field(default_factory=dict)
    #: the summary of a finished run that is continued (or left alone)
    previous: Optional[RunSummary] = None


def compare(old: Dict[str, Any], new: Dict[str, Any]) -> Tuple[List[str], Dict[str, Tuple[Any, Any]]]:
    """(refused keys, applied changes) between a checkpoint's config and a new one."""
    a, b = flatten(old), flatten(new)
    a.update({k: v for k, v in ADDED.items() if k not in a})
    differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    fixed = [k for k in differing if _is_fixed(k)]
    applied = {k: (a.get(k), b.get(k)) for k in differing if k in APPLIED}
    return fixed, applied


def _is_fixed(key: str) -> bool:
    if key in APPLIED or key in FREE:
        return False
    return any(key == p.rstrip(".") or key.startswith(p) for p in FIXED)


def plan(cfg: Dict[str, Any], run_dir: Path, start_missing: bool = False) -> StartPlan:
    """How the training described by ``cfg`` starts in ``run_dir`` (raises UserError to refuse).
    ``start_missing``: ``resume=true`` on a job that never started starts it (a resumed sweep:
    finished jobs are left alone, started ones continue, the rest start)."""
    run_dir = Path(run_dir)
    has_last, finished = (run_dir / LAST).is_file(), (run_dir / SUMMARY).is_file()
    if not cfg.get("resume"):
        if has_last or finished:
            raise UserError(f"{run_dir} already holds a run; pass resume=true to continue it, "
                            "or use a new run dir.")
        return StartPlan("new")
    if not has_last:
        if start_missing and not finished:
            return StartPlan("new")
        return _nothing_to_resume(run_dir, finished)
    ck = checkpoint.load(run_dir / LAST)
    fixed, applied = compare(ck["config"], cfg)
    if fixed:
        shown = _describe(fixed, flatten(ck["config"]), flatten(cfg))
        raise UserError(f"Cannot resume {run_dir} with settings that change the model ({shown}); "
                        "resume with the run's own settings, or train in a new run dir.")
    previous = RunSummary.read_or_none(run_dir) if finished else None
    if previous is not None and not _can_continue(ck, cfg):
        return StartPlan("finished", previous=previous)
    return StartPlan("resume", ck, applied, previous)


def _nothing_to_resume(run_dir: Path, finished: bool) -> StartPlan:
    if finished:
        raise UserError(f"{run_dir} holds a finished run without checkpoints/last.pt; nothing to resume.")
    if not ((run_dir / SNAPSHOT).is_dir() or (run_dir / METRICS).is_file()):
        raise UserError(f"Nothing to resume: {run_dir} has no {LAST}; pass hydra.run.dir=<the run's dir>.")
    log.info(f"{run_dir} was stopped before its first checkpoint; starting it again from iteration 0.")
    return StartPlan("new")


def _can_continue(ck: Dict[str, Any], cfg: Dict[str, Any]) -> bool:
    """Whether a finished run has more to do under ``cfg`` (more iterations or more time)."""
    state = checkpoint.train_state(ck)
    tr = cfg["trainer"]
    if tr.get("fit_to_budget") and state.planned_iterations:  # planned by the clock: more time, more run
        before = float(ck["config"]["trainer"].get("max_minutes") or 0)
        return float(tr["max_minutes"]) > before and state.seconds < 60 * float(tr["max_minutes"])
    if int(tr["iterations"]) <= state.iteration:
        return False
    return not tr.get("max_minutes") or state.seconds < 60 * float(tr["max_minutes"])


def _describe(keys: List[str], old: Dict[str, Any], new: Dict[str, Any], limit: int = 6) -> str:
    """``key: old -> new; ...``; a section whose option changed (``algo.name``) is one entry."""
    replaced = [k.split(".")[0] for k in keys if k.count(".") == 1 and k.endswith(".name")
                and k.split(".")[0] in ("algo", "backbone", "dataset")]
    keys = [k for k in keys if k.split(".")[0] not in replaced or k.endswith(".name")]
    parts = [f"{k}: {_show(old.get(k))} -> {_show(new.get(k))}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more


def _show(value: Any) -> str:
    return "(none)" if value is None else str(value)
