"""Nothing lost, nothing silent (issues 18 and 21), through the real CLI on tiny glyphs runs:
run-dir locks, divergence, resume with changed settings, preemption (SIGTERM/SIGINT, time-based
checkpoints), unique run dirs, refusals that leave a run byte-identical, failed writes."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, metafsl_processes, metrics_rows, same_run

FAULT = [sys.executable, str(REPO / "tests" / "fault_runner.py")]
SHORT = [*TINY, "trainer.iterations=8", "trainer.val_every=4", "trainer.log_every=1"]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


class Killed(BaseException):
    """Raised by a fault listener: the training stops dead, as with ``kill -9`` (no handler runs)."""


def _train(run_dir: Path, *extra: str, fault: tuple = ()):
    """A training in this process (the result of ``run_cli``); ``fault=(event, iteration, action)``
    acts at that hook event: ``kill`` (raises Killed) or a signal name sent to this process."""
    from metafsl.cli import main
    from metafsl.engine import hooks

    def listener(name: str, it: int) -> None:
        if fault and name == fault[0] and it == fault[1]:
            hooks.LISTENERS.remove(listener)
            if fault[2] == "kill":
                raise Killed()
            os.kill(os.getpid(), getattr(signal, fault[2]))

    hooks.LISTENERS.append(listener)
    try:
        code = main(["train", f"hydra.run.dir={run_dir}", *SHORT, *extra])
    finally:
        if listener in hooks.LISTENERS:
            hooks.LISTENERS.remove(listener)
    return code


def _digest(run: Path) -> dict:
    """Every file of a run dir (but its lock file) -> sha256 of its bytes."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def _one_sentence(result) -> str:
    """The words of a command's output (a run_cli result or captured output), with no traceback."""
    text = result.out + result.err if hasattr(result, "out") else result[1] + result[2]
    assert "Traceback" not in text, text
    return " ".join(text.split())


@pytest.fixture(scope="session")
def full(tmp_path_factory):
    """The uninterrupted reference run every resumed run must match."""
    run = tmp_path_factory.mktemp("full") / "run"
    assert _train(run) == 0
    return run


# ----------------------------------------------------------------------------- 18.1 lock
def test_a_second_training_in_a_locked_run_dir_refuses(tmp_path, full, capsys):
    """A (another process) holds the run dir, hanging after iteration 1 before any checkpoint; B
    refuses in one sentence.  A dies (kill -9): its lock goes with it, and a rerun starts clean
    (no duplicate metrics rows)."""
    run = tmp_path / "run"
    holder = subprocess.Popen([*FAULT, "iteration_end", "1", "hang", "--", "train", f"hydra.run.dir={run}",
                               *SHORT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert any("HANG" in line for line in holder.stdout)  # A is inside its training
        capsys.readouterr()
        assert _train(run) == 2
        assert "is in use by another metafsl training" in _one_sentence(capsys.readouterr())
        assert not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (run / "metrics.jsonl").is_file() and not (run / "checkpoints").exists()
    assert _train(run, "resume=true") == 0
    assert "starting it again from iteration 0" in capsys.readouterr().out
    same_run(run, full)


# ----------------------------------------------------------------------------- 18.2 divergence
def test_divergence_stops_with_one_sentence_and_keeps_good_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "trainer.val_every=1", "trainer.optimizer._target_=torch.optim.SGD",
                  "trainer.optimizer.lr=1e6") == 2
    msg = _one_sentence(capsys.readouterr())
    assert "Training diverged at iteration" in msg and "became inf or NaN" in msg
    assert any(w in msg for w in ("buffer backbone.", "parameter backbone.", "gradient of backbone."))
    assert not (run / "summary.json").exists()
    for name in ("best.pt", "last.pt"):
        ck = torch.load(run / "checkpoints" / name, weights_only=True)
        assert all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())
    assert [r for r in metrics_rows(run) if r["split"] == "diverged"]


# ----------------------------------------------------------------------------- 18.4 preemption
@pytest.mark.parametrize("action,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_saves_the_step_and_the_run_resumes_identically(tmp_path, full, action, code, capsys):
    run = tmp_path / "run"
    assert _train(run, "trainer.checkpoint_every_minutes=null", fault=("iteration_end", 3, action)) == code
    assert f"Stopped by {action} after iteration 3" in _one_sentence(capsys.readouterr())
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 3
    assert _train(run, "resume=true", "trainer.checkpoint_every_minutes=null") == 0
    same_run(run, full)


def test_time_based_checkpoints_let_a_run_killed_before_validation_resume(tmp_path, full):
    run = tmp_path / "run"
    with pytest.raises(Killed):
        _train(run, "trainer.checkpoint_every_minutes=1e-9", fault=("iteration_end", 3, "kill"))
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["iteration"] == 3 and ck["state"]["val_iteration"] == 0  # no validation yet
    assert _train(run, "resume=true", "trainer.checkpoint_every_minutes=1e-9") == 0
    same_run(run, full)


# ----------------------------------------------------------------------------- 18.3 / 21.2 resume
def test_resume_applies_schedule_changes_and_keeps_every_record(tmp_path, full, run_cli):
    run = tmp_path / "run"
    shutil.copytree(full, run)
    code, _, err = run_cli("test", f"run={run}", "eval.episodes=4")
    assert code == 0, err
    first = json.loads((run / "summary.json").read_text())
    code, out, err = run_cli("train", f"hydra.run.dir={run}", *SHORT, "resume=true",
                             "trainer.iterations=10", "trainer.optimizer.lr=0.0005")
    assert code == 0, err
    assert "trainer.optimizer.lr 0.001 -> 0.0005" in " ".join(out.split())
    records = metrics_rows(run)
    change = [r for r in records if r["split"] == "resume"]
    assert change and change[0]["iteration"] == 8
    assert change[0]["changed"]["trainer.optimizer.lr"] == {"from": 0.001, "to": 0.0005}
    assert [r["lr"] for r in records if r["split"] == "train" and r["iteration"] > 8] == [0.0005, 0.0005]
    s = json.loads((run / "summary.json").read_text())
    assert s["train"]["iterations"] == 10
    assert s["tests"][0] == first["tests"][0]  # the earlier `metafsl test` record
    assert s["tests"][1]["acc"] == first["test"]["acc"]  # the superseded training-time test
    assert s["version"] == 2 and s["threads"] >= 1 and s["code_version"]


def test_resume_refuses_model_changes_and_a_finished_run_is_left_alone(tmp_path, full, run_cli):
    run = tmp_path / "run"
    shutil.copytree(full, run)
    before = _digest(run)
    msg = _one_sentence(run_cli("train", f"hydra.run.dir={run}", *SHORT, "resume=true", "algo=maml",
                                "backbone.hidden=32", "episode.train.n_way=3"))
    assert "Cannot resume" in msg and "algo.name: protonet -> maml" in msg
    assert "backbone.hidden: 64 -> 32" in msg and "episode.train.n_way: 5 -> 3" in msg
    assert _digest(run) == before
    # a re-train (no resume) of another algorithm in a finished run's dir: refused, .hydra/ untouched
    assert "already holds a run" in _one_sentence(run_cli("train", f"hydra.run.dir={run}", *SHORT, "algo=maml"))
    assert _digest(run) == before
    code, out, _ = run_cli("train", f"hydra.run.dir={run}", *SHORT, "resume=true")
    assert code == 0 and "is a finished run (8 iterations): nothing to resume" in " ".join(out.split())
    assert _digest(run) == before


# ----------------------------------------------------------------------------- 18.10 / 18.7 test
def test_test_refuses_a_checkpoint_of_another_architecture(tmp_path, full, run_cli):
    run = tmp_path / "run"
    shutil.copytree(full, run)
    path = run / "checkpoints" / "best.pt"
    ck = torch.load(path, weights_only=True)
    ck["config"]["backbone"]["name"] = "conv4_32"  # as if copied from a conv4_32 run
    torch.save(ck, path)
    before = _digest(run)
    msg = _one_sentence(run_cli("test", f"run={run}"))
    assert "does not belong to the run" in msg and "backbone.name: conv4_32 in the checkpoint, conv4 in the run" in msg
    assert _digest(run) == before


def test_a_failed_result_write_is_one_sentence_after_the_result(tmp_path, full, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out, err = run_cli("test", f"run={full}", "eval.episodes=4", f"out={blocker / 'sub'}")
    assert code == 2 and "test acc" in out and "Traceback" not in out + err
    assert "Cannot write" in " ".join(err.split())
    support = tmp_path / "support"
    from PIL import Image
    for k in range(2):
        (support / f"c{k}").mkdir(parents=True)
        Image.new("L", (28, 28), 255 * k).save(support / f"c{k}" / "a.png")
    code, out, err = run_cli("predict", f"run={full}", f"support={support}", f"query={support}",
                             f"out={blocker / 'p.csv'}")
    assert code == 2 and "Predictions for 2 images" in " ".join(out.split()) and "Traceback" not in out + err
    assert "Cannot write the predictions" in " ".join(err.split())
    assert not list(tmp_path.glob("**/*.tmp")) and not list(full.glob("**/.*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only dirs")
def test_test_on_a_read_only_run_prints_then_fails_in_one_sentence(tmp_path, full, run_cli):
    run = tmp_path / "run"
    shutil.copytree(full, run)
    before = _digest(run)
    for p in [run, *run.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        code, out, err = run_cli("test", f"run={run}", "eval.episodes=4")
    finally:
        for p in [run, *run.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert code == 2 and "test acc" in out and "Cannot write" in err and "Traceback" not in out + err
    assert _digest(run) == before


# ----------------------------------------------------------------------------- 21.1 unique dirs
def test_two_trainings_started_together_get_their_own_run_dirs(tmp_path):
    args = ["train", *TINY, "trainer.iterations=2", "trainer.val_every=2", "test=false"]
    for code, output in metafsl_processes([args, args], {"METAFSL_OUTPUT_DIR": str(tmp_path)}):
        assert code == 0, output
    runs = sorted((tmp_path / "train").iterdir())
    assert len(runs) == 2 and all((r / "summary.json").is_file() for r in runs)
    assert all((r / ".hydra" / "config.yaml").is_file() for r in runs)


def test_two_tests_at_once_keep_both_records(tmp_path, full):
    run = tmp_path / "run"
    shutil.copytree(full, run)
    args = ["test", f"run={run}", "eval.episodes=2"]
    for code, output in metafsl_processes([[*args, f"eval.seed={seed}"] for seed in (1, 2)]):
        assert code == 0, output
    tests = json.loads((run / "summary.json").read_text())["tests"]
    assert sorted(t["eval_seed"] for t in tests) == [1, 2]
    assert len(list((run / "tests").glob("*/result.json"))) == 2


def test_a_refused_config_leaves_no_empty_run_dir(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("METAFSL_OUTPUT_DIR", str(tmp_path))
    assert run_cli("train", *TINY, "trainer.val_every=0")[0] == 2
    assert not list((tmp_path / "train").iterdir())


def test_an_uncreatable_output_dir_is_one_sentence(tmp_path, run_cli, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("METAFSL_OUTPUT_DIR", str(tmp_path / "file" / "outputs"))
    msg = _one_sentence(run_cli("train", *TINY))
    assert msg.startswith("error: Cannot create a run dir under") and "paths.output_dir" in msg


def test_test_and_predict_outputs_are_unique_and_never_overwritten(tmp_path, full, run_cli):
    run = tmp_path / "run"
    shutil.copytree(full, run)
    for _ in range(2):
        assert run_cli("test", f"run={run}", "eval.episodes=4")[0] == 0
    assert len(list((run / "tests").glob("*/result.json"))) == 2
    assert len(json.loads((run / "summary.json").read_text())["tests"]) == 2
    mine = tmp_path / "mine"
    assert run_cli("test", f"run={run}", "eval.episodes=4", f"out={mine}")[0] == 0
    kept = (mine / "result.json").read_bytes()
    assert "already holds a test result" in _one_sentence(run_cli("test", f"run={run}", f"out={mine}"))
    assert (mine / "result.json").read_bytes() == kept
    assert run_cli("test", f"run={run}", "eval.episodes=4", f"out={mine}", "overwrite=true")[0] == 0
    support = tmp_path / "support"
    from PIL import Image
    for k in range(2):
        (support / f"c{k}").mkdir(parents=True)
        Image.new("L", (28, 28), 255 * k).save(support / f"c{k}" / "a.png")
    query = support / "c0" / "a.png"
    for _ in range(2):
        code, _, err = run_cli("predict", f"run={run}", f"support={support}", f"query={query}")
        assert code == 0, err
    assert len(list((run / "predictions").glob("*.csv"))) == 2
    out = tmp_path / "p.csv"
    assert run_cli("predict", f"run={run}", f"support={support}", f"query={query}", f"out={out}")[0] == 0
    kept = out.read_bytes()
    msg = _one_sentence(run_cli("predict", f"run={run}", f"support={support}", f"query={query}", f"out={out}"))
    assert "already exists; pass overwrite=true" in msg and out.read_bytes() == kept
    assert run_cli("predict", f"run={run}", f"support={support}", f"query={query}", f"out={out}",
                   "overwrite=true")[0] == 0
    msg = _one_sentence(run_cli("predict", f"run={run}", f"support={support}", f"query={query}",
                                f"out={tmp_path}"))
    assert "is a directory" in msg


def test_predict_needs_no_dataset(tmp_path, full, run_cli, monkeypatch):
    """The checkpoint carries the preprocessing (normalisation statistics included)."""
    ck = torch.load(full / "checkpoints" / "best.pt", weights_only=True)
    assert ck["preprocessing"] == {"image_size": 28, "channels": 1, "mean": None, "std": None}
    import metafsl.data

    def no_data(*a, **k):
        raise AssertionError("predict loaded the dataset")

    monkeypatch.setattr(metafsl.data, "load_dataset", no_data)
    from metafsl import api

    support = tmp_path / "support"
    from PIL import Image
    for k in range(2):
        (support / f"c{k}").mkdir(parents=True)
        Image.new("L", (28, 28), 255 * k).save(support / f"c{k}" / "a.png")
    result = api.predict(full, support, [support / "c1" / "a.png"])
    assert result.names == ["c0", "c1"] and result.probs.shape == (1, 2)
