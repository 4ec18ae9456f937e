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
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[name] = script  # as an import would: its dataclasses look their module up there
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


class Forked:
    """``fn(*args)`` (returning an exit code) running in a fork of this process, its output to a
    temporary file; ``wait()`` returns (exit code, output).  The child has this process's one
    thread and imports, so it skips the 4-5 s of a fresh interpreter (torch, torch._dynamo,
    Hydra) that most of a tiny run's time would be.  Only where ``START_METHOD`` is fork."""

    def __init__(self, fn, *args):
        import sys
        import tempfile

        self.log = tempfile.TemporaryFile("w+")
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never return into pytest, whatever happens
            code = 1
            try:
                os.dup2(self.log.fileno(), 1)
                os.dup2(self.log.fileno(), 2)
                sys.stdout = sys.stderr = os.fdopen(os.dup(self.log.fileno()), "w", buffering=1)
                code = fn(*args)
            except SystemExit as exit_:  # sys.exit(n) or sys.exit("sentence"), as a process would
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - reported through the log, then exit
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code if isinstance(code, int) else 1)

    def wait(self, timeout: float | None = None) -> tuple[int, str]:
        """(exit code, output); a child still running after ``timeout`` seconds is killed
        (exit code -9, its output so far and a line saying so)."""
        import signal
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
        while not pid and time.monotonic() < deadline:
            time.sleep(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        late = not pid
        if late:
            os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
        with self.log:
            self.log.seek(0)
            out = self.log.read() + (f"\n[killed after {timeout} s]" if late else "")
            return os.waitstatus_to_exitcode(status), out


def _separate(main, path: Path, args: list, timeout: float | None = None, env: dict | None = None
              ) -> tuple[int, str]:
    """(exit code, stdout and stderr together) of ``main(args)``, the ``main`` of the file
    ``path``, in a separate process: a fork of this one (``Forked``: the file's imports are this
    worker's, so it skips a fresh interpreter's 4-5 s of CPU) on a CPU-only machine, ``python
    <path> <args>`` where CUDA devices exist (see ``START_METHOD``; ``env``: variables set there)."""
    import subprocess
    import sys

    if START_METHOD == "fork":
        return Forked(main(), args).wait(timeout)
    proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr


def killed_training(event: str, iteration: int, argv: list) -> tuple[int, str]:
    """``metafsl <argv>`` in a separate process (``_separate``) that hard-exits (as ``kill -9``
    would) when ``event`` happens at ``iteration`` (tests/fault_runner.py: exit code 75 means the
    fault fired); returns (exit code, the process's output)."""

    def main():
        import fault_runner

        return fault_runner.main

    return _separate(main, REPO / "tests" / "fault_runner.py", [event, str(iteration), "--", *map(str, argv)],
                     env={"OMP_NUM_THREADS": "1"})


def run_script(name: str, args: list, timeout: float = 300) -> tuple[int, str]:
    """(exit code, output) of ``python scripts/<name>.py <args>`` in a separate process
    (``_separate``), killed after ``timeout`` seconds."""
    return _separate(lambda: load_script(name).main, REPO / "scripts" / f"{name}.py", [str(a) for a in args],
                     timeout)


def _cli_with_env(argv: list, env: dict) -> int:
    from metafsl.cli import main

    os.environ.update(env)
    return main([str(a) for a in argv])


def metafsl_processes(argvs: list, env: dict | None = None) -> list:
    """(exit code, output) of ``metafsl <argv>`` for each of ``argvs``, all started at once, each
    in a process of its own (``env``: environment variables set in those processes): forks of
    this one (``Forked``) on a CPU-only machine, fresh interpreters where CUDA devices exist."""
    import subprocess
    import sys

    env = env or {}
    if START_METHOD == "fork":
        return [p.wait() for p in [Forked(_cli_with_env, argv, env) for argv in argvs]]
    full = {**os.environ, **env, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-m", "metafsl.cli", *map(str, argv)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=full) for argv in argvs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outputs)]
