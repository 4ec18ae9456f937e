"""One training on 2 worker processes (torch.distributed, Gloo on the CPU): the averaged
meta-gradients equal one process's on the whole meta-batch; a run through the real CLI writes one
run dir of today's layout; a worker killed mid-training is restarted by the launcher and the run
ends as if uninterrupted; bad settings are one sentence each, before any work."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import torch

from conftest import START_METHOD, TINY, same_run

#: one pytest-xdist worker runs them all (`--dist loadgroup`): the 2-worker run is trained once
pytestmark = pytest.mark.xdist_group("distributed")

#: 2 workers x meta-batch 2 (1 task each), a validation (and last.pt) at iterations 3 and 6; on the
#: CPU with Gloo also on a GPU machine: the kill/resume comparison is bit for bit, which CUDA's
#: convolution kernels do not promise
DIST = [*TINY, "trainer.meta_batch_size=2", "seed=3", "distributed.nproc_per_node=2", "device=cpu"]


def _cli(*args: str) -> int:
    from metafsl.cli import main

    return main([str(a) for a in args])


def _files(run: Path) -> list:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def test_two_workers_average_their_gradients_like_one_process(tmp_path):
    import torch.multiprocessing as mp

    from dist_helpers import SIZES, learner, train, worker

    alone = {name: train(name, size) for name, size in SIZES.items()}  # first: forked workers inherit it loaded
    mp.start_processes(worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method=START_METHOD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in SIZES:
        before = learner(name).state_dict()
        assert any(not torch.allclose(before[k], alone[name][k]) for k in before), f"{name} did not train"
        for key, value in alone[name].items():
            assert torch.equal(ranks[0][name][key], ranks[1][name][key]), (name, key)
            assert torch.allclose(ranks[0][name][key], value, atol=1e-5), (name, key)


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """A 1-process run and a 2-worker run of the same tiny ProtoNet training, through the CLI.
    Session scope: a pytest-xdist worker may run other files' tests between this file's, and a
    module fixture would then be torn down and trained again (seen: twice in one suite)."""
    root = tmp_path_factory.mktemp("dist")
    assert _cli("train", *TINY, f"hydra.run.dir={root / 'one'}") == 0
    assert _cli("train", *DIST, f"hydra.run.dir={root / 'two'}") == 0
    return root


def test_a_distributed_run_writes_one_run_dir_of_the_usual_layout(runs):
    assert _files(runs / "two") == _files(runs / "one")
    summary = json.loads((runs / "two" / "summary.json").read_text())
    assert summary["train"]["workers"] == 2 and summary["train"]["episodes_per_step"] == 2
    assert summary["train"]["iterations"] == 6 and summary["test"]["acc"] > 0
    assert [p for p in runs.iterdir()] and sorted(p.name for p in runs.iterdir()) == ["one", "two"]


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(runs, tmp_path):
    """Rank 0 is killed with SIGKILL after iteration 4 (last.pt holds iteration 3); the launcher
    restarts both workers (distributed.max_restarts=1), they resume from last.pt, and the run ends
    exactly as the uninterrupted 2-worker run of the same config (``runs / 'two'``)."""
    from dist_helpers import KillAt
    from metafsl import api

    cfg = api.compose("train", [*DIST, "distributed.max_restarts=1"])
    api.train(cfg, tmp_path / "killed", callbacks=[KillAt(4)])
    rows = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["split"] == "val"] == [3, 6], rows
    same_run(tmp_path / "killed", runs / "two")


def _refused(run_cli, tmp_path, *args: str) -> str:
    run = tmp_path / "2026-01-01_00-00-00"
    t0 = time.perf_counter()
    code, out, err = run_cli("train", *TINY, *args, f"hydra.run.dir={run}")
    assert code == 2 and "Traceback" not in err and time.perf_counter() - t0 < 15
    assert not run.exists(), "a refused run left its dir"
    return err


@pytest.mark.parametrize("args, words", [
    (["distributed.nproc_per_node=0"], "distributed.nproc_per_node must be >= 1 (got 0)"),
    (["distributed.nproc_per_node=3", "trainer.meta_batch_size=4"],
     "trainer.meta_batch_size=4 cannot be split evenly over 3 workers"),
    (["distributed.nproc_per_node=2", "distributed.backend=nccl"], "needs a CUDA GPU per worker"),
])
def test_bad_settings_are_one_sentence(run_cli, tmp_path, args, words):
    if "distributed.backend=nccl" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = _refused(run_cli, tmp_path, *args)
    assert words in err and len(err.strip().splitlines()) == 1


def test_an_unreachable_rendezvous_gives_up_in_seconds(run_cli, tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    err = _refused(run_cli, tmp_path, "distributed.nnodes=2", f"distributed.rdzv_endpoint=localhost:{port}",
                   "distributed.join_timeout=2")
    assert "could not meet" in err and len(err.strip().splitlines()) == 1


def test_two_workers_follow_one_plan_made_by_the_clock(tmp_path):
    """trainer.fit_to_budget on 2 workers: rank 0 plans, both move to its end (a worker that kept
    the first plan would hang the next all-reduce), and the cosine completes inside the budget."""
    from test_budget_plan import COSINE, _rows

    run = tmp_path / "fit"
    assert _cli("train", *DIST, *COSINE, "trainer.max_minutes=0.1", "trainer.fit_to_budget=true",
                f"hydra.run.dir={run}") == 0
    train = json.loads((run / "summary.json").read_text())["train"]
    plans = _rows(run, "plan")
    assert plans and train["workers"] == 2 and train["planned_iterations"] == plans[-1]["iterations"] < 100000
    # a busy machine (the suite runs in parallel) can slow the last steps after the final plan:
    # the run then stops a little short of it, never past it
    assert 0.85 * train["planned_iterations"] <= train["iterations"] <= train["planned_iterations"]
    assert _rows(run, "train")[-1]["lr"] < 0.1 * 1e-3
