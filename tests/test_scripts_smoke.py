"""Smoke tests of what ships beside the library: `metafsl demo` (what `make demo` runs) and the
speed benchmark scripts/bench.py, each on tiny settings."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from conftest import TINY, run_script

TINY_RUN = [*TINY, "backbone.hidden=8", "trainer.iterations=4", "trainer.val_every=2", "eval.episodes=4"]


def test_demo_trains_both_methods_and_reports_the_untrained_baseline(run_cli, tmp_path):
    code, out, err = run_cli("demo", f"hydra.sweep.dir={tmp_path}", *TINY_RUN)
    assert code == 0, err + out
    rows = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))
    assert sorted(r["overrides"].split()[0] for r in rows) == ["experiment=demo_maml", "experiment=demo_protonet"]
    for r in rows:
        s = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert s["algo"] in ("protonet", "maml") and s["train"]["iterations"] == 4  # the overrides applied
        assert s["untrained"]["episodes"] == s["test"]["episodes"] == 4
        assert float(r["untrained_acc"]) == s["untrained"]["acc"]
    assert "untrained" in out


def test_bench_smoke_runs_every_benchmark(tmp_path):
    code, out = run_script("bench", ["--smoke", "--threads", "1"])
    assert code == 0, out
    table = out.split("peak memory MiB / note", 1)[1]
    rows = [ln for ln in table.splitlines() if re.search(r"\d+\.\d\dx", ln)]
    names = " | ".join(rows)
    assert len(rows) == 7, out
    for part in ("ProtoNet Omniglot 20w5s5q training step", "episode sampling", "backend=l2l", "backend=vmap",
                 "ProtoNet Omniglot 5w1s test"):
        assert part in names
    for row in rows:
        ours, ref, ratio = re.search(r"\s([\d.]+)\s+([\d.]+)\s+([\d.]+)x", row).groups()
        assert float(ours) > 0 and float(ref) > 0 and float(ratio) > 0, row
