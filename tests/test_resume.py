"""Kill a training process (tests/fault_runner.py), resume it with resume=true, and require the
same metrics, the same final weights, optimiser and scheduler state as an uninterrupted run, for
every kind of state a run carries beyond ProtoNet with Adam (tests/test_cli.py has that one):
a learning-rate schedule (StepLR as in the Snell presets; Reptile's linear annealing), MAML's
two backends (the l2l one through the MAML++ case, which adds its learned rates, multi-step-loss
annealing and per-step batch-norm weights and biases), the Baseline's mini-batch sampler, MANN."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, killed_training, session_run

#: the Snell et al. presets' schedule (experiment=snell2017_*: StepLR, gamma 0.5) with a step of 3
STEPLR = "trainer.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:3,gamma:0.5}"

CASES = {
    "steplr": ["algo=protonet", STEPLR],
    # trainer=reptile: SGD lr 1 linearly annealed to 0 over trainer.iterations, 5 tasks a batch
    "reptile_schedule": ["algo=reptile", "trainer=reptile", "trainer.meta_batch_size=2",
                         "algo.inner_steps=2", "algo.test_inner_steps=3"],
    "maml_vmap": ["algo=maml", "algo.backend=vmap", "trainer.meta_batch_size=2"],
    # the kill at iteration 5 falls inside the annealing (msl_iterations=7), the run ends after it
    "maml_plus_plus": ["algo=maml", "algo.multi_step_loss=true", "algo.per_step_lr=true",
                       "algo.per_step_bn=true", "algo.inner_steps=2", "algo.msl_iterations=7"],
    "baseline_batches": ["algo=baseline", "algo.finetune_epochs=2"],
    "mann": ["algo=mann", "algo.controller_size=16", "algo.memory_slots=8", "algo.memory_size=4",
             "trainer.meta_batch_size=2"],
}


def args(run_dir: Path, *extra: str) -> list[str]:
    return ["train", f"hydra.run.dir={run_dir}", *TINY, "backbone.hidden=8", "trainer.iterations=8",
            "trainer.val_every=2", "trainer.log_every=1", "eval.episodes=4", *extra]


def train(run_cli, run_dir: Path, *extra: str) -> str:
    """An uninterrupted (or resumed) run, in this process (one thread, as conftest sets)."""
    code, out, err = run_cli(*args(run_dir, *extra))
    assert code == 0, err + out
    return out


def killed(run_dir: Path, *extra: str, iteration: int = 5) -> None:
    """A training process killed (hard exit) when ``iteration`` ends (conftest.killed_training).
    One thread, as in this process, so that its arithmetic is the same bit for bit."""
    code, output = killed_training("iteration_end", iteration, args(run_dir, *extra))
    assert code == 75, output  # the fault fired
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ck["iteration"] == iteration - 1 and not (run_dir / "summary.json").exists()


def full_run(run_cli, tmp_path_factory, case: str) -> Path:
    """The uninterrupted run of ``case``, trained once per session (read, never changed)."""
    return session_run(tmp_path_factory, f"resume-{case}", lambda run: train(run_cli, run, *CASES[case]))


def metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_state(a, b, where: str = "") -> None:
    """Nested checkpoint state (tensors, dicts, lists, numbers) equal, bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_after_a_kill_matches_an_uninterrupted_run(run_cli, tmp_path, tmp_path_factory, case):
    extra = CASES[case]
    full = full_run(run_cli, tmp_path_factory, case)
    killed(tmp_path / "crash", *extra)
    assert "Resuming" in train(run_cli, tmp_path / "crash", *extra, "resume=true")
    assert metrics(full) == metrics(tmp_path / "crash")
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((tmp_path / "crash" / "summary.json").read_text())
    assert (a["val"], a["test"]["acc"]) == (b["val"], b["test"]["acc"])
    ca = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    cb = torch.load(tmp_path / "crash" / "checkpoints" / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "sampler"):
        assert_same_state(ca[key], cb[key], key)


def test_the_resumed_state_is_really_there(run_cli, tmp_path_factory):
    """The cases above compare state that changes during training: StepLR halves the rate every
    3 iterations, Reptile's rate falls linearly, MAML++'s annealing counter advances (their
    uninterrupted runs, shared with the cases)."""
    lrs = [r["lr"] for r in metrics(full_run(run_cli, tmp_path_factory, "steplr")) if r["split"] == "train"]
    assert lrs == [1e-3] * 2 + [5e-4] * 3 + [2.5e-4] * 3
    lrs = [r["lr"] for r in metrics(full_run(run_cli, tmp_path_factory, "reptile_schedule")) if r["split"] == "train"]
    assert lrs == pytest.approx([1 - i / 8 for i in range(1, 9)])
    msl = full_run(run_cli, tmp_path_factory, "maml_plus_plus")
    model = torch.load(msl / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert int(model["msl_iteration"]) == 8  # one per training iteration
    rows = model["backbone.0.normalize.weight"]  # per-step BN: inner_steps + 1 learned sets
    assert rows.shape[0] == 3 and not torch.equal(rows[0], rows[2])
