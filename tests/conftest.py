"""Shared fixtures: offline, fast, every run in a temp dir.

``run_cli`` calls the real entry point (``metafsl.cli.main``) in-process; ``TINY`` overrides
make a run take a second or two on glyphs.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

#: how tests start Gloo workers by hand: fork (cheap, the workers inherit the parent's imports) on
#: a CPU-only machine; spawn where CUDA devices exist, since there a process that has run any
#: backward pass holds autograd's device threads and torch refuses autograd in its forked children
START_METHOD = "spawn" if torch.cuda.device_count() else "fork"

#: a tiny glyphs dataset and a few iterations: each run takes seconds
TINY_DATA = ["dataset.n_classes=60", "dataset.examples_per_class=20"]
TINY = TINY_DATA + ["trainer=fast", "trainer.iterations=6", "trainer.val_every=3",
                    "trainer.val_episodes=4", "eval.episodes=8", "episode.train.n_query=5",
                    "episode.test.n_query=5"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    os.environ["METAFSL_CACHE_DIR"] = str(cache)
    os.environ["METAFSL_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    os.environ["METAFSL_OUTPUT_DIR"] = str(tmp_path_factory.mktemp("outputs"))
    yield


@pytest.fixture
def run_cli(capsys):
    """Run ``metafsl <args>`` in-process; returns (exit code, stdout, stderr)."""
    from metafsl.cli import main

    def _run(*args: str):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run


def load_script(name: str):
    """``scripts/<name>.py`` loaded as a module, to call its functions and ``main`` in process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def shared(name: str) -> Path:
    """A real dataset under ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} not present")
    return path


def split_table(out: str) -> dict:
    """{split: {"classes": int, "images": int}} from the table `metafsl data` prints (a class
    count is read from its own cell, not found anywhere in the output)."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) >= 3 and cells[0] in ("train", "val", "test"):
            rows[cells[0]] = {"classes": int(cells[1]), "images": int(cells[2])}
    return rows


def metrics_rows(run: Path) -> list:
    """A run's metrics.jsonl rows without their wall-clock times."""
    import json

    return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def same_run(run: Path, full: Path) -> None:
    """A resumed ``run`` ended exactly like the uninterrupted ``full``: metrics, summary, weights."""
    import json

    assert metrics_rows(run) == metrics_rows(full)
    a, b = (json.loads((r / "summary.json").read_text()) for r in (full, run))
    assert a["test"]["acc"] == b["test"]["acc"] and a["val"] == b["val"]
    wa = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def session_run(tmp_path_factory, name: str, train) -> Path:
    """The run dir ``train(run_dir)`` makes, once per pytest session: the tests that only read it
    share it, whichever pytest-xdist worker comes first trains it (under a file lock)."""
    import fcntl
    import shutil

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by this session's workers
    run = root / "session-runs" / name
    run.parent.mkdir(exist_ok=True)
    with open(run.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run / "summary.json").exists():
            shutil.rmtree(run, ignore_errors=True)  # left by an earlier failed attempt
            train(run)
    return run
