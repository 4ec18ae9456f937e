"""What a run dir records, through the real CLI (issue 25 §5, §6): the model best.pt keeps, the
last partial block of train-loss rows of a run stopped by its time budget, no trace of a training
refused before any work, and `metafsl test` on a run whose `.hydra/config.yaml` is unusable."""
from __future__ import annotations

import hashlib
import json
import shutil
import types
from pathlib import Path

import pytest
import torch

from conftest import TINY

#: 12 iterations, a validation every 2: six validation accuracies that differ
LONG = [*TINY, "trainer.iterations=12", "trainer.val_every=2", "trainer.log_every=2"]


def _rows(run: Path, split: str):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def _words(result) -> str:
    code, out, err = result
    assert "Traceback" not in out + err
    return " ".join((out + err).split())


@pytest.fixture(scope="session")
def run12(tmp_path_factory):
    from metafsl.cli import main

    run = tmp_path_factory.mktemp("long") / "run"
    assert main(["train", f"hydra.run.dir={run}", *LONG]) == 0
    return run


# ----------------------------------------------------------------------------- §6 best.pt
def test_best_pt_keeps_the_model_of_the_best_validation(run12):
    """best.pt holds the iteration of the highest validation accuracy (the first, on a tie); a
    comparison inverted to keep the worst model fails here."""
    val = _rows(run12, "val")
    accs = [r["acc"] for r in val]
    assert len(val) == 6 and max(accs) > min(accs), accs  # the validations differ: the test can tell
    best = val[accs.index(max(accs))]
    ck = torch.load(run12 / "checkpoints" / "best.pt", weights_only=True)
    assert ck["iteration"] == best["iteration"], accs
    assert ck["best"] == {"acc": best["acc"], "iteration": best["iteration"]}
    summary = json.loads((run12 / "summary.json").read_text())
    assert summary["val"] == {"best_acc": best["acc"], "best_iteration": best["iteration"]}
    assert summary["test"]["iteration"] == best["iteration"] and summary["test"]["checkpoint"] == "best"


# ----------------------------------------------------------------------------- §5 max_minutes
def test_a_run_stopped_by_its_time_budget_logs_its_last_partial_block(tmp_path, run_cli, monkeypatch):
    """trainer.log_every=4 and the budget spent at iteration 6: a row at 4, and one at 6 for 5-6."""
    from metafsl.engine import hooks, recipe

    real = recipe.time.perf_counter

    def out_of_time(name: str, it: int) -> None:  # from iteration 6 on, an hour has passed
        if (name, it) == ("iteration_end", 5):
            monkeypatch.setattr(recipe, "time", types.SimpleNamespace(perf_counter=lambda: real() + 3600))

    monkeypatch.setattr(hooks, "LISTENERS", [out_of_time])
    run = tmp_path / "run"
    code, out, err = run_cli("train", f"hydra.run.dir={run}", *TINY, "trainer.iterations=12",
                             "trainer.log_every=4", "trainer.val_every=4", "trainer.max_minutes=1")
    assert code == 0, err
    assert "Time budget of 1 min reached at iteration 6" in " ".join(out.split())
    train = _rows(run, "train")
    assert [r["iteration"] for r in train] == [4, 6]
    assert all(r["loss"] > 0 for r in train)
    assert json.loads((run / "summary.json").read_text())["train"]["iterations"] == 6


# ----------------------------------------------------------------------------- §5 refused runs
OMNIGLOT_MISSING = "Omniglot set 'images_background' not found under"


def test_a_training_refused_before_any_work_leaves_nothing_behind(tmp_path, run_cli, monkeypatch):
    """No Omniglot in paths.data_dir: refused after the run dir was made and locked, before any
    work; the default dir and a new explicit dir are gone, a dir that existed keeps exactly what it
    held."""
    monkeypatch.setenv("METAFSL_OUTPUT_DIR", str(tmp_path / "outputs"))
    assert OMNIGLOT_MISSING in _words(run_cli("train", "dataset=omniglot"))
    assert not list((tmp_path / "outputs" / "train").iterdir())
    new = tmp_path / "new" / "run"
    assert OMNIGLOT_MISSING in _words(run_cli("train", "dataset=omniglot", f"hydra.run.dir={new}"))
    assert not new.exists() and (tmp_path / "new").is_dir()  # a parent made by Hydra stays: harmless
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert OMNIGLOT_MISSING in _words(run_cli("train", "dataset=omniglot", f"hydra.run.dir={mine}"))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert OMNIGLOT_MISSING in _words(run_cli("train", "dataset=omniglot", f"hydra.run.dir={empty}"))
    assert empty.is_dir() and not list(empty.iterdir())


def _digest(run: Path) -> dict:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="device=cuda must be refused at setup")
def test_a_resume_refused_at_setup_leaves_the_run_byte_identical(tmp_path, run12, run_cli):
    run = tmp_path / "run"
    shutil.copytree(run12, run)
    (run / ".lock").unlink()
    before = _digest(run)
    msg = _words(run_cli("train", f"hydra.run.dir={run}", *LONG, "resume=true", "trainer.iterations=14",
                         "device=cuda"))
    assert "no CUDA GPU is available here" in msg
    assert _digest(run) == before


# ----------------------------------------------------------------------------- §5 test's config
@pytest.mark.parametrize("snapshot,why", [("- a\n- b\n", "is not a readable run config"),
                                          ("{{{ not: [yaml\n", "is not a readable run config"),
                                          ("a: 1\n", "is not a readable run config"),
                                          (None, "is missing")])
def test_test_says_it_uses_the_checkpoints_config(tmp_path, run12, run_cli, snapshot, why):
    run = tmp_path / "run"
    shutil.copytree(run12, run)
    config = run / ".hydra" / "config.yaml"
    if snapshot is None:
        shutil.rmtree(run / ".hydra")
    else:
        config.write_text(snapshot)
    code, out, err = run_cli("test", f"run={run}", "eval.episodes=4")
    assert code == 0, err
    words = _words((code, out, err))
    assert f"note: {config} {why}; testing with the config saved in {run / 'checkpoints' / 'best.pt'}." in words
    intact = tmp_path / "intact"
    shutil.copytree(run12, intact)
    assert run_cli("test", f"run={intact}", "eval.episodes=4")[0] == 0
    acc = [json.loads((r / "summary.json").read_text())["tests"][-1]["acc"] for r in (run, intact)]
    assert acc[0] == acc[1]  # the same config: the checkpoint's


def test_test_refuses_a_checkpoint_without_a_config_in_one_sentence(tmp_path, run12, run_cli):
    run = tmp_path / "run"
    shutil.copytree(run12, run)
    shutil.rmtree(run / ".hydra")
    path = run / "checkpoints" / "best.pt"
    ck = torch.load(path, weights_only=True)
    ck["config"] = ["not", "a", "config"]
    torch.save(ck, path)
    code, out, err = run_cli("test", f"run={run}")
    assert code == 2
    assert (f"{path} holds no usable run config to rebuild its model from; test a checkpoint written by "
            "metafsl train.") in _words((code, out, err))
