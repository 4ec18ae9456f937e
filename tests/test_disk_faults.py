"""Real filesystems that refuse writes (issue 25 §5): a read-only mount and a full tmpfs.

Each test mounts its own small tmpfs (as root, or with CAP_SYS_ADMIN; skipped, saying so, where
mounting is impossible).  A full disk is made real by allocating every free byte of the tmpfs at a
chosen point of a training (a hook listener), so that the next write that needs space fails with
ENOSPC, as on a real full disk (torch's zip writer then raises ``RuntimeError ... unexpected pos``).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import TINY, same_run

#: 8 iterations, validation (and best.pt/last.pt) at 4 and 8, a train row every 2 iterations
SHORT = [*TINY, "trainer.iterations=8", "trainer.val_every=4", "trainer.log_every=2",
         "trainer.checkpoint_every_minutes=null"]


@pytest.fixture
def mount(tmp_path):
    """``mount(name, options)``: a fresh tmpfs at ``tmp_path/name``, unmounted after the test."""
    mounted = []

    def _mount(name: str, options: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("cannot mount a tmpfs here: no mount command")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield _mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(disk: Path, keep: int) -> Path:
    """Allocate the free space of ``disk`` but ``keep`` bytes: a write that needs more fails (ENOSPC).
    With some space left, torch's zip writer fails part-way and raises ``RuntimeError ... unexpected
    pos``; with none, its first write fails and raises OSError."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - keep)
    assert os.statvfs(disk).f_bavail * st.f_frsize == keep
    return filler


def _train(capsys, run: Path, *extra: str, fill_at: tuple = (), keep: int = 0):
    """``metafsl train`` in this process; ``fill_at=(event, iteration)`` fills the run's disk there
    but ``keep`` bytes.  Returns (exit code, the words of its output, the filler file or None)."""
    from metafsl.cli import main
    from metafsl.engine import hooks

    filled = []

    def listener(name: str, it: int) -> None:
        if (name, it) == fill_at and not filled:
            filled.append(_fill(run.parent, keep))

    hooks.LISTENERS.append(listener)
    try:
        code = main(["train", f"hydra.run.dir={run}", *SHORT, *extra])
    finally:
        hooks.LISTENERS.remove(listener)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    return code, " ".join(text.split()), filled[0] if filled else None


@pytest.fixture(scope="session")
def full(tmp_path_factory):
    """The uninterrupted reference run."""
    from metafsl.cli import main

    run = tmp_path_factory.mktemp("full") / "run"
    assert main(["train", f"hydra.run.dir={run}", *SHORT]) == 0
    return run


def _no_temp_files(disk: Path) -> None:
    assert not [p for p in disk.rglob("*.tmp")], "a temp file of a failed write was left"


# ----------------------------------------------------------------------------- full disk
def test_a_full_disk_at_the_first_checkpoint_then_resume(mount, full, capsys):
    disk = mount("disk", "size=16m")
    run = disk / "run"
    code, msg, filler = _train(capsys, run, fill_at=("iteration_end", 2), keep=64 * 1024)
    assert code == 2
    assert (f"The disk of the run dir {run} is full (No space left on device): checkpoints/best.pt was not "
            f"written; free some space, then continue with resume=true hydra.run.dir={run}.") in msg
    _no_temp_files(disk)
    assert not list((run / "checkpoints").iterdir())
    filler.unlink()
    code, msg, _ = _train(capsys, run, "resume=true")
    assert code == 0 and "starting it again from iteration 0" in msg
    same_run(run, full)


def test_a_full_disk_mid_run_keeps_earlier_checkpoints_and_resumes_identically(mount, full, capsys):
    from metafsl.engine import checkpoint

    disk = mount("disk", "size=16m")
    run = disk / "run"
    code, msg, filler = _train(capsys, run, fill_at=("iteration_end", 5), keep=64 * 1024)
    assert code == 2
    assert (f"The disk of the run dir {run} is full (No space left on device): checkpoints/last.pt was not "
            f"written and the previous one is intact; free some space, then continue with resume=true "
            f"hydra.run.dir={run}.") in msg
    _no_temp_files(disk)
    for name in ("best.pt", "last.pt"):
        assert checkpoint.load(run / "checkpoints" / name)["iteration"] == 4
    filler.unlink()
    code, msg, _ = _train(capsys, run, "resume=true")
    assert code == 0 and "Resuming" in msg and "from iteration 4" in msg
    same_run(run, full)


def test_a_full_disk_at_a_metrics_row_leaves_no_partial_line(mount, full, capsys):
    disk = mount("disk", "size=16m")
    run = disk / "run"
    code, msg, filler = _train(capsys, run, fill_at=("iteration_end", 1))  # before the first row
    assert code == 2
    assert (f"The disk of the run dir {run} is full (No space left on device): a row of metrics.jsonl was "
            f"not written; free some space") in msg
    assert (run / "metrics.jsonl").read_text() == ""
    filler.unlink()
    code, msg, _ = _train(capsys, run, "resume=true")
    assert code == 0 and "starting it again from iteration 0" in msg
    same_run(run, full)


def test_a_metrics_row_cut_short_by_a_full_disk_is_taken_back(mount):
    """The row that crosses into a page the full disk cannot give is written in part, then fails:
    the part is removed (a later row would otherwise be glued to it and both lost)."""
    from metafsl.engine.run_dir import MetricsLog
    from metafsl.errors import UserError

    disk = mount("disk", "size=1m")
    log = MetricsLog(disk / "run" / "metrics.jsonl")
    log.path.parent.mkdir()
    log.write({"iteration": 1, "split": "train", "pad": "x" * 4000})  # most of the file's first page
    before = log.path.read_bytes()
    _fill(disk, keep=0)
    with pytest.raises(UserError, match=f"The disk of the run dir {disk / 'run'} is full"):
        log.write({"iteration": 2, "split": "train", "pad": "y" * 500})
    assert log.path.read_bytes() == before


def test_a_full_disk_at_the_summary_shows_the_result_and_resume_writes_it(mount, full, capsys):
    disk = mount("disk", "size=16m")
    run = disk / "run"
    code, msg, filler = _train(capsys, run, fill_at=("test_start", 4))
    assert code == 2
    acc = json.loads((full / "summary.json").read_text())["test"]["acc"]
    assert f"{acc:.2f}" in msg  # the result was printed before the write that failed
    assert (f"The disk of the run dir {run} is full (No space left on device): summary.json was not written "
            f"and the results are shown above; free some space") in msg
    assert not (run / "summary.json").exists()
    _no_temp_files(disk)
    filler.unlink()
    code, msg, _ = _train(capsys, run, "resume=true")
    assert code == 0
    same_run(run, full)


# ----------------------------------------------------------------------------- read-only
def test_a_run_dir_on_a_read_only_filesystem_is_one_sentence(mount, run_cli):
    ro = mount("ro", "ro,size=1m")
    code, out, err = run_cli("train", f"hydra.run.dir={ro / 'run'}", *TINY)
    assert code == 2 and "Traceback" not in out + err
    assert f"Cannot create {ro / 'run'} (Read-only file system); pass hydra.run.dir=<a writable folder>." \
        in " ".join(err.split())
    code, out, err = run_cli("train", f"hydra.run.dir={ro}", *TINY)  # the mount itself: it exists
    assert code == 2 and f"Cannot lock the run dir {ro} (Read-only file system)" in " ".join(err.split())
    code, out, err = run_cli("train", f"paths.output_dir={ro / 'outputs'}", *TINY)
    assert code == 2 and f"Cannot create a run dir under {ro / 'outputs'}/train" in " ".join(err.split())
    code, out, err = run_cli("sweep", f"hydra.sweep.dir={ro / 'sweep'}", "seed=0,1", *TINY)
    assert code == 2 and "Traceback" not in out + err
    assert f"Cannot create {ro / 'sweep'} (Read-only file system); pass hydra.sweep.dir=" in " ".join(err.split())


def test_results_out_on_a_read_only_filesystem_prints_then_fails_in_one_sentence(mount, full, run_cli):
    ro = mount("ro", "ro,size=1m")
    code, out, err = run_cli("results", str(full), f"out={ro / 'table.md'}")
    assert code == 2 and "Traceback" not in out + err
    assert f"| {full} | protonet | glyphs |" in out  # the table is shown before the write that failed
    assert (f"Cannot write the table to {ro / 'table.md'} (Read-only file system); the result above was not "
            "saved there.") in " ".join(err.split())
    code, out, err = run_cli("results", str(full), "plot=shots", f"plot_file={ro / 'shots.png'}")
    assert code == 2 and "Traceback" not in out + err
    assert f"Cannot write the plot {ro / 'shots.png'} (Read-only file system)" in " ".join(err.split())
