"""``trainer.fit_to_budget``: plan a training's length by the clock, so that it ends, with its
learning-rate schedule completed, inside ``trainer.max_minutes`` on whatever machine runs it.

Without it ``trainer.iterations`` is a guess of what the budget holds: on a slower machine the
budget stops the run with the schedule half done (a cosine still at half its peak rate), on a
faster one the run ends early with time unused.  With it, ``trainer.iterations`` is only the first
plan.  At every validation the run measures what a training step costs (the steps since the last
plan; a one-off slow step, such as a compilation, is left out) and what a validation costs,
and sets the end to the last iteration that still fits the time left.  The schedule follows:
a cosine (``CosineAnnealingLR``) continues from its current rate to its floor at the new end
(torch's chainable form does that exactly when ``T_max`` changes); step schedules (``StepLR``,
``MultiStepLR``, ``PiecewiseConstant``) keep their milestones at the same fractions of the run.
Options counted in iterations that are not part of the schedule (MAML++'s ``msl_iterations``,
``first_order_until``) stay where they are.

Written here rather than taken from a library: it is a few lines over torch's own schedulers and
the recipe's clock, and no scheduler library plans a run's length by wall-clock time.
"""
from __future__ import annotations

import bisect
import math
import statistics
from collections import Counter
from typing import Any, Dict, List, Optional

from torch.optim import lr_scheduler

#: a step this many times slower than the window's median is a one-off (a compilation) and left out
ONE_OFF = 10.0
#: the plan leaves this fraction of the time left unplanned (timing noise), at least 3 steps
MARGIN = 0.01


class BudgetPlan:
    """The end iteration of a run under ``trainer.fit_to_budget`` and its schedule's re-planning.

    Built right after the scheduler (before a resume restores it), so that the schedule's
    configured iteration counts are known as planned for ``trainer.iterations``."""

    def __init__(self, trainer: Dict[str, Any], scheduler: Optional[Any]):
        self.planned = int(trainer["iterations"])
        self.max_seconds = 60.0 * float(trainer["max_minutes"])
        self.val_every = int(trainer["val_every"])
        self.scheduler = scheduler
        self.first = _schedule_counts(scheduler)  # the schedule as configured for self.planned
        self.configured = self.planned
        self.steps: List[float] = []
        self.val_seconds = 0.0
        self.stale = False  # a resume with other minutes: plan again before the first step

    def step_took(self, seconds: float) -> None:
        self.steps.append(seconds)

    def validation_took(self, seconds: float) -> None:
        self.val_seconds = seconds

    def seconds_per_step(self) -> Optional[float]:
        """The mean step of the window since the last plan, one-off slow steps left out."""
        if not self.steps:
            return None
        median = statistics.median(self.steps)
        usual = [s for s in self.steps if s <= ONE_OFF * median]
        return sum(usual) / len(usual)

    def replan(self, iteration: int, elapsed: float) -> Optional[Dict[str, Any]]:
        """The new end after ``iteration`` with ``elapsed`` seconds spent: the most iterations whose
        steps and in-between validations fit the time left (at least one more).  Without a step
        measured in this process (a finished run resumed with more minutes) the run's average so
        far is the estimate.  Returns the plan's record (None before anything ran); the window
        starts again."""
        per_step = self.seconds_per_step()
        if per_step is None:
            if iteration == 0:
                return None
            per_step = elapsed / iteration
        left = self.max_seconds - elapsed
        left -= max(MARGIN * left, 3 * per_step)
        per_iteration = per_step + self.val_seconds / self.val_every
        self.planned = iteration + max(1, math.floor(left / per_iteration))
        self.steps, self.stale = [], False
        return {"iteration": iteration, "split": "plan", "iterations": self.planned,
                "step_seconds": round(per_step, 4), "val_seconds": round(self.val_seconds, 2),
                "seconds_left": round(self.max_seconds - elapsed, 1)}

    def apply(self, iteration: int) -> None:
        """Move the schedule's milestones to the same fractions of the planned run."""
        if self.scheduler is None or not self.first:
            return
        ratio = self.planned / max(1, self.configured)
        sched = self.scheduler
        if isinstance(sched, lr_scheduler.CosineAnnealingLR):
            if iteration < sched.T_max:  # a cosine that already reached its floor stays there
                sched.T_max = max(iteration + 1, round(self.first["T_max"] * ratio))
            return
        if isinstance(sched, lr_scheduler.StepLR):
            sched.step_size = max(1, round(self.first["step_size"] * ratio))
            factors = [sched.gamma ** (iteration // sched.step_size)]
        elif isinstance(sched, lr_scheduler.MultiStepLR):
            moved = sorted(max(1, round(m * ratio)) for m in self.first["milestones"])
            sched.milestones = Counter(moved)
            factors = [sched.gamma ** bisect.bisect_right(moved, iteration)]
        else:  # LambdaLR over PiecewiseConstant
            for fn, first in zip(sched.lr_lambdas, self.first["lambdas"]):
                fn.milestones = [max(1, round(m * ratio)) for m in first]
            factors = [fn(iteration) for fn in sched.lr_lambdas]
        if len(factors) == 1:
            factors = factors * len(sched.base_lrs)
        for group, base, factor in zip(sched.optimizer.param_groups, sched.base_lrs, factors):
            group["lr"] = base * factor  # the step schedule as if planned this long from the start


def _schedule_counts(scheduler: Optional[Any]) -> Dict[str, Any]:
    """The iteration counts of a schedule ``apply`` moves ({} for none)."""
    if scheduler is None:
        return {}
    if isinstance(scheduler, lr_scheduler.CosineAnnealingLR):
        return {"T_max": int(scheduler.T_max)}
    if isinstance(scheduler, lr_scheduler.StepLR):
        return {"step_size": int(scheduler.step_size)}
    if isinstance(scheduler, lr_scheduler.MultiStepLR):
        return {"milestones": sorted(scheduler.milestones.elements())}
    if isinstance(scheduler, lr_scheduler.LambdaLR) and \
            all(hasattr(fn, "milestones") for fn in scheduler.lr_lambdas):
        return {"lambdas": [list(fn.milestones) for fn in scheduler.lr_lambdas]}
    return {}
