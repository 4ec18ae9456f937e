"""Run-dir records on resume: no validation row twice, no half-written temp file left behind."""
from __future__ import annotations

import json

from metafsl.engine.run_dir import MetricsLog, remove_orphan_temp_files


def test_resume_drops_rows_the_checkpoint_does_not_know(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for it, split in [(4, "train"), (4, "val"), (8, "train"), (8, "val"), (12, "train"), (12, "val"),
                      (14, "train")]:
        log.write({"iteration": it, "split": split})
    # last.pt saved at iteration 12 before its validation ran: the val@12 row is redone on resume
    log.truncate_after(12, validated=8)
    assert [(r["iteration"], r["split"]) for r in log.read()] == [
        (4, "train"), (4, "val"), (8, "train"), (8, "val"), (12, "train")]
    log.truncate_after(8)
    assert [r["iteration"] for r in log.read()] == [4, 4, 8, 8]


def test_orphan_temp_files_of_atomic_writes_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    orphans = [tmp_path / ".summary.json.ab12.tmp", tmp_path / "checkpoints" / ".last.pt.x9.tmp"]
    kept = [tmp_path / "summary.json", tmp_path / "checkpoints" / "last.pt", tmp_path / "notes.tmp"]
    for p in orphans + kept:
        p.write_text(json.dumps({}))
    assert sorted(remove_orphan_temp_files(tmp_path)) == sorted(orphans)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in orphans)


def test_a_checkpoint_write_that_fails_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    import pytest
    import torch

    from metafsl.engine import checkpoint
    from metafsl.errors import UserError

    path = tmp_path / "checkpoints" / "last.pt"
    checkpoint.save(path, {"iteration": 4, "model": {"w": torch.ones(2)}})
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="No space left on device.*the previous one is intact"):
        checkpoint.save(path, {"iteration": 8, "model": {"w": torch.zeros(2)}})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_atomic_writes_keep_the_modes_open_would_give(tmp_path):
    """Records are readable by others as any file the user writes (not mkstemp's 0600), and a
    replaced file keeps its own mode."""
    import os

    from metafsl.engine.run_dir import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "new.json", "{}")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
        (tmp_path / "new.json").chmod(0o640)
        write_text(tmp_path / "new.json", "{}\n")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
