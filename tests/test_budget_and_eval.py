"""What every recorded figure depends on: the wall-clock budget (trainer.max_minutes), the test
episodes chosen by eval.seed, and the 95% confidence interval."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY

#: 0.02 min = 1.2 s of training, far fewer than the iterations asked for
BUDGET = ["trainer.max_minutes=0.02", "trainer.iterations=100000", "trainer.val_every=100000",
          "backbone.hidden=8"]


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def _train_records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["split"] == "train"]


def test_max_minutes_stops_on_time_and_keeps_the_checkpoint(run_cli, tmp_path):
    code, out, err = run_cli("train", f"hydra.run.dir={tmp_path}", *TINY, *BUDGET)
    assert code == 0, err + out
    assert "Time budget of 0.02 min reached" in out
    s = _summary(tmp_path)
    done = s["train"]["iterations"]
    assert 0 < done < 100000 and s["train"]["planned_iterations"] == 100000
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["iteration"] == done and last["state"]["seconds"] >= 1.2
    # on time: the budget plus at most one iteration and the final validation (a few episodes)
    assert last["state"]["seconds"] < 1.2 + 5
    assert s["val"]["best_iteration"] == done and s["test"]["iteration"] == done
    # a resumed run whose budget is spent trains no further (and is tested again)
    records = _train_records(tmp_path)
    code, out, err = run_cli("train", f"hydra.run.dir={tmp_path}", *TINY, *BUDGET, "resume=true")
    assert code == 0, err + out
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["iteration"] == done
    assert _summary(tmp_path)["train"]["iterations"] == done
    assert _train_records(tmp_path) == records
    assert _summary(tmp_path)["test"]["acc"] == s["test"]["acc"]


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    from metafsl.cli import main

    path = tmp_path_factory.mktemp("seed") / "run"
    assert main(["train", f"hydra.run.dir={path}", *TINY, "backbone.hidden=8", "test=false"]) == 0
    return path


def _test_acc(run_cli, run, tmp_path, seed):
    code, out, err = run_cli("test", f"run={run}", "eval.episodes=10", f"eval.seed={seed}",
                             f"hydra.run.dir={tmp_path / f'test{seed}_{len(list(tmp_path.iterdir()))}'}")
    assert code == 0, err + out
    return _summary(run)["tests"][-1]


def test_eval_seed_chooses_the_episodes(run_cli, run, tmp_path):
    """The same seed, the same episodes (the same accuracy to the last digit); different seeds,
    different episodes (the accuracies of three seeds are not all equal)."""
    first = _test_acc(run_cli, run, tmp_path, 11)
    assert first["eval_seed"] == 11
    again = _test_acc(run_cli, run, tmp_path, 11)
    assert (again["acc"], again["ci95"]) == (first["acc"], first["ci95"])
    others = [_test_acc(run_cli, run, tmp_path, s) for s in (12, 13)]
    assert len({r["acc"] for r in [first, *others]}) > 1


def test_ci95_is_1_96_standard_errors_of_the_episode_accuracies():
    from metafsl.engine.evaluate import mean_ci95

    # by hand: mean 80; deviations 20, 0, -20, 0; sample variance 800/3; n = 4
    res = mean_ci95(torch.tensor([100.0, 80.0, 60.0, 80.0]))
    assert res["episodes"] == 4 and res["acc"] == pytest.approx(80.0)
    assert res["ci95"] == pytest.approx(1.96 * math.sqrt(800 / 3) / 2)  # 16.00
    assert mean_ci95(torch.tensor([40.0]))["ci95"] == 0.0  # one episode: no spread to estimate


def test_the_episode_loop_bounds_its_batches_and_keeps_the_predictions(monkeypatch):
    """Learners off the fast path (MAML, TADAM) evaluate a batch of episodes at once; on the
    CPU the batch is bounded by the activation memory, which changes no prediction."""
    from metafsl.algorithms.maml import MAML
    from metafsl.data.base import FewShotSplit
    from metafsl.engine import evaluate as ev
    from metafsl.engine import fast_eval
    from metafsl.models import build_backbone

    g = torch.Generator().manual_seed(0)
    split = FewShotSplit(torch.randint(0, 256, (60, 1, 12, 12), generator=g, dtype=torch.uint8),
                         torch.arange(6).repeat_interleave(10), [str(i) for i in range(6)])
    torch.manual_seed(0)
    algo = MAML(build_backbone("conv4", 1, 12, hidden=4, layers=2), 3, test_inner_steps=1)
    spec = ev.EvalSpec(3, 1, 2, episodes=10, seed=3, batch_episodes=16)
    steps = []
    loop = ev._episode_loop
    monkeypatch.setattr(ev, "_episode_loop", lambda *a, **k: steps.append(a[3]) or loop(*a, **k))
    whole = ev.predict_episodes(algo, split, spec).predicted
    monkeypatch.setattr(fast_eval, "images_per_pass", lambda backbone, x: 18 // len(x))  # 2 episodes of 9 images
    bounded = ev.predict_episodes(algo, split, spec).predicted
    assert steps == [16, 2] and torch.equal(bounded, whole)
