"""trainer.fit_to_budget: the run's end planned by the clock, the LR schedule moved with it."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim import lr_scheduler

from conftest import TINY
from metafsl.config import run_config_problems
from metafsl.engine.budget_plan import BudgetPlan
from metafsl.engine.schedules import PiecewiseConstant


def _optimizer(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _trainer(iterations=1000, minutes=1.0, val_every=100):
    return {"iterations": iterations, "max_minutes": minutes, "val_every": val_every}


def _lrs(opt, sched, start, stop):
    out = []
    for _ in range(start, stop):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_replan_fits_steps_and_validations_into_the_time_left():
    plan = BudgetPlan(_trainer(iterations=1000, minutes=1.0, val_every=100), None)
    for _ in range(100):
        plan.step_took(0.1)
    plan.step_took(30.0)  # a compilation: left out of the step's cost
    plan.validation_took(2.0)
    record = plan.replan(100, elapsed=20.0)
    assert record["step_seconds"] == pytest.approx(0.1)
    left = 60.0 - 20.0
    n = math.floor((left - max(0.01 * left, 0.3)) / (0.1 + 2.0 / 100))
    assert record["iterations"] == plan.planned == 100 + n
    assert plan.steps == []  # the next plan measures a new window


def test_a_cosine_shrunk_mid_run_ends_at_its_floor_without_a_jump():
    opt = _optimizer()
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=1000, eta_min=0.01)
    plan = BudgetPlan(_trainer(iterations=1000), sched)
    before = _lrs(opt, sched, 0, 200)
    plan.planned = 400
    plan.apply(200)
    after = _lrs(opt, sched, 200, 400)
    assert sched.T_max == 400
    assert abs(after[0] - before[-1]) < 0.02  # continuous: no jump at the re-plan
    assert after[-1] == pytest.approx(0.01, abs=1e-9)  # the floor exactly at the new end
    assert all(a >= b for a, b in zip(after, after[1:]))
    # grown instead: the floor moves out to the new end
    opt2 = _optimizer()
    sched2 = lr_scheduler.CosineAnnealingLR(opt2, T_max=1000, eta_min=0.01)
    plan2 = BudgetPlan(_trainer(iterations=1000), sched2)
    _lrs(opt2, sched2, 0, 200)
    plan2.planned = 3000
    plan2.apply(200)
    lrs = _lrs(opt2, sched2, 200, 3000)
    assert lrs[800] > 0.5 and lrs[-1] == pytest.approx(0.01, abs=1e-9)


@pytest.mark.parametrize("kind", ["step", "multistep", "piecewise"])
def test_step_schedules_keep_their_milestones_at_the_same_fractions(kind):
    opt = _optimizer()
    if kind == "step":
        sched = lr_scheduler.StepLR(opt, step_size=250, gamma=0.5)
    elif kind == "multistep":
        sched = lr_scheduler.MultiStepLR(opt, milestones=[250, 500, 750], gamma=0.5)
    else:
        sched = lr_scheduler.LambdaLR(opt, PiecewiseConstant([250, 500, 750], [1, 0.5, 0.25, 0.125]))
    plan = BudgetPlan(_trainer(iterations=1000), sched)
    _lrs(opt, sched, 0, 300)  # one decay under the first plan (at 250)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    plan.planned = 500  # half as long: milestones at 125, 250, 375
    plan.apply(300)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)  # two decays behind 300 now
    at = dict(zip(range(301, 500), _lrs(opt, sched, 300, 499)))  # the rate after the step to each iteration
    assert at[374] == pytest.approx(0.25) and at[375] == pytest.approx(0.125) and at[499] == pytest.approx(0.125)


@pytest.mark.parametrize("extra, words", [
    (["trainer.fit_to_budget=true"], "trainer.max_minutes, which is not set"),
    (["trainer.fit_to_budget=true", "trainer.max_minutes=5",
      "trainer.scheduler={_target_: torch.optim.lr_scheduler.ExponentialLR, _partial_: true, gamma: 0.9}"],
     "not ExponentialLR"),
])
def test_impossible_plans_are_one_sentence_before_any_work(run_cli, tmp_path, extra, words):
    code, out, err = run_cli("train", f"hydra.run.dir={tmp_path / 'run'}", *TINY, *extra)
    assert code != 0 and words in err + out and "Traceback" not in err + out
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_config_check_accepts_the_schedules_it_plans():
    base = {"trainer": {"fit_to_budget": True, "max_minutes": 5}}
    for target in ("CosineAnnealingLR", "StepLR", "MultiStepLR"):
        base["trainer"]["scheduler"] = {"_target_": f"torch.optim.lr_scheduler.{target}"}
        assert not [p for p in run_config_problems(base) if "fit_to_budget" in p]


def _rows(run, split):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


COSINE = ["trainer.scheduler={_target_: torch.optim.lr_scheduler.CosineAnnealingLR, _partial_: true, "
          "T_max: 100000, eta_min: 0.00001}", "trainer.iterations=100000", "trainer.val_every=10",
          "trainer.log_every=5", "trainer.val_episodes=2", "backbone.hidden=8"]


def test_a_run_planned_by_the_clock_completes_its_cosine_inside_the_budget(run_cli, tmp_path):
    """100000 iterations asked for, 6 seconds given: the plan ends the run inside the budget with
    the cosine at its floor; without the plan a budget (3 seconds) cuts it with the rate at its peak."""
    runs = {}
    for fit, minutes in (("true", 0.1), ("false", 0.05)):  # the unplanned run only shows the cut
        run = tmp_path / fit
        code, out, err = run_cli("train", f"hydra.run.dir={run}", *TINY, *COSINE, f"trainer.max_minutes={minutes}",
                                 f"trainer.fit_to_budget={fit}")
        assert code == 0, err + out
        runs[fit] = json.loads((run / "summary.json").read_text())["train"], _rows(run, "train"), _rows(run, "plan")
    train, rows, plans = runs["true"]
    assert plans and all(p["iterations"] < 100000 for p in plans)
    assert train["fit_to_budget"] and train["configured_iterations"] == 100000
    assert train["planned_iterations"] == plans[-1]["iterations"]
    # the end is the plan's (or, on a loaded machine, the budget's a few steps before it: the
    # plan is an estimate from measured step costs; 278 of 283 seen under CI's -n 2 load)
    assert 0.95 * train["planned_iterations"] <= train["iterations"] <= train["planned_iterations"]
    assert train["seconds"] < 6 + 5  # the budget plus the final validation
    assert rows[-1]["lr"] < 0.05 * 1e-3  # the cosine completed
    unplanned, rows0, plans0 = runs["false"]
    assert not plans0 and unplanned["planned_iterations"] == 100000 and rows0[-1]["lr"] > 0.9e-3


def test_a_planned_run_resumes_with_its_plan_and_grows_with_more_minutes(run_cli, tmp_path):
    args = ["train", f"hydra.run.dir={tmp_path}", *TINY, *COSINE, "trainer.fit_to_budget=true"]
    code, out, err = run_cli(*args, "trainer.max_minutes=0.05")
    assert code == 0, err + out
    first = json.loads((tmp_path / "summary.json").read_text())["train"]
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["state"]["planned_iterations"] == first["planned_iterations"]
    # the same budget again: a finished run, nothing more to do
    code, out, err = run_cli(*args, "trainer.max_minutes=0.05", "resume=true")
    assert code == 0, err + out
    assert json.loads((tmp_path / "summary.json").read_text())["train"]["iterations"] == first["iterations"]
    # twice the minutes: planned again, longer
    code, out, err = run_cli(*args, "trainer.max_minutes=0.1", "resume=true")
    assert code == 0, err + out
    second = json.loads((tmp_path / "summary.json").read_text())["train"]
    assert second["iterations"] > first["iterations"] and second["planned_iterations"] > first["planned_iterations"]


def test_a_quick_pass_of_a_planned_preset_scales_its_minutes():
    from metafsl.api import apply_budget, compose, resolved

    cfg = apply_budget(resolved(compose("train", ["experiment=maml_omniglot_cpu_5w1s", "budget=0.1"]),
                                check=False))
    assert cfg["trainer"]["fit_to_budget"] is True
    assert cfg["trainer"]["max_minutes"] == pytest.approx(6.0) and cfg["trainer"]["iterations"] == 1460
