"""End to end: every method trains, validates and tests on tiny glyphs via the CLI, as one sweep
(shared helpers for the other end-to-end zoo tests live here)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from conftest import TINY
from metafsl.conf import group_options

#: keep each run to a second or two: tiny backbone, short test-time loops
FAST = {
    "reptile": ["algo.test_inner_steps=5", "algo.inner_steps=2"],
    "baseline": ["algo.finetune_epochs=3"],
    "baselinepp": ["algo.finetune_epochs=3"],
    "metaoptnet": ["algo.svm_steps=5", "algo.test_svm_steps=10"],
    "mann": ["algo.controller_size=16", "algo.memory_slots=8", "algo.memory_size=4"],
    "metalstm": ["algo.steps=2"],
}
OPTIMISATION = ["fomaml", "metasgd", "anil", "reptile", "mann", "metalstm"]
METRIC_AND_TRANSFER = ["matchingnet", "relationnet", "siamese", "metaoptnet", "baseline", "baselinepp"]
ZOO = OPTIMISATION + METRIC_AND_TRANSFER


def train(run_cli, tmp_path, *overrides):
    code, out, err = run_cli("train", *TINY, "backbone.hidden=8", "trainer.iterations=4",
                             "trainer.val_every=2", "eval.episodes=4", f"hydra.run.dir={tmp_path}",
                             *overrides)
    assert code == 0, err + out
    return json.loads((tmp_path / "summary.json").read_text())


def test_sweep_over_every_method_ranks_them(run_cli, tmp_path):
    """The issue's acceptance: `metafsl sweep algo=<all>` on glyphs completes and its summary
    ranks the methods (best validation accuracy first).  Each job is one method trained,
    validated and tested on the glyphs through the CLI, so this is also every method's
    end-to-end smoke test (tests/test_learning.py checks that each one learns), and the sweep
    command's test: its summary CSV, run dirs and printed table."""
    every = group_options("algo")
    assert len(every) == 17
    code, out, err = run_cli("sweep", f"hydra.sweep.dir={tmp_path}", f"algo={','.join(every)}", *TINY,
                             "backbone.hidden=8", "trainer.iterations=2", "trainer.val_every=2",
                             "eval.episodes=4")
    assert code == 0, err + out
    rows = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))
    assert sorted(r["overrides"].split()[0] for r in rows) == sorted(f"algo={a}" for a in every)
    vals = [float(r["val_acc"]) for r in rows]
    assert vals == sorted(vals, reverse=True)
    for r in rows:
        assert 0 <= float(r["test_acc"]) <= 100 and float(r["ci95"]) >= 0 and float(r["seconds"]) > 0
        assert (Path(r["run_dir"]) / ".hydra" / "config.yaml").exists()
    assert "Sweep" in out and "algo=maml" in out  # the ranked table is printed too
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")]
    assert sorted(s["algo"] for s in summaries) == sorted(every)
    assert all(s["test"]["episodes"] == 4 and 0 <= s["test"]["acc"] <= 100 for s in summaries)
