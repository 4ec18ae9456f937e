"""`metafsl results` aggregation/sorting/export, curves.png, plot=shots, budget scaling."""
from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import TINY


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory):
    """Two tiny ProtoNet runs (1-shot and 2-shot) and a later `metafsl test` at 5-way 3-shot."""
    from metafsl.cli import main

    root = tmp_path_factory.mktemp("runs")
    for shot in (1, 2):
        assert main(["train", *TINY, "backbone.hidden=16", f"episode.train.n_shot={shot}",
                     f"episode.test.n_shot={shot}", f"hydra.run.dir={root / f'run{shot}'}"]) == 0
    assert main(["test", f"run={root / 'run2'}", "episode.test.n_shot=3", "eval.episodes=4"]) == 0
    return root


def test_each_run_writes_curves_png(two_runs):
    png = two_runs / "run1" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_results_table_csv_sort_and_plot(run_cli, two_runs, tmp_path):
    code, out, err = run_cli("results", str(two_runs), "format=csv", "sort=test")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3  # two runs + one later test record
    tests = [float(r["test"]) for r in rows]
    assert tests == sorted(tests, reverse=True)
    s1 = json.loads((two_runs / "run1" / "summary.json").read_text())
    r1 = next(r for r in rows if r["run"].endswith("run1"))
    assert float(r1["test"]) == pytest.approx(s1["test"]["acc"], abs=1e-3)
    assert r1["algo"] == "protonet" and r1["episode"] == "5w1s" and "episode.train.n_shot=1" in r1["overrides"]
    assert {r["episode"] for r in rows} == {"5w1s", "5w2s", "5w3s"}
    out_md = tmp_path / "res.md"
    code, out, err = run_cli("results", str(two_runs / "run1"), str(two_runs / "run2"), f"out={out_md}",
                             "plot=shots")
    assert code == 0, err
    assert out_md.read_text().startswith("| run | algo |")
    png = tmp_path / "accuracy_vs_shots.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_results_skip_a_summary_with_fields_of_the_wrong_type(run_cli, two_runs, tmp_path):
    """Each such summary.json is skipped with a warning naming it; the other rows are shown."""
    import shutil

    good = json.loads((two_runs / "run1" / "summary.json").read_text())
    broken = {"test": ("x", "'test' is a string, not a mapping"),
              "val": ([], "'val' is a list, not a mapping"),
              "train": ({"seconds": "fast"}, "'train.seconds' is a string, not a number"),
              "tests": ([{"acc": "97.5", "episode": {"n_way": 5, "n_shot": 1}}],
                        "'tests[0].acc' is a string, not a number")}
    shutil.copytree(two_runs / "run1", tmp_path / "good")
    for field, (value, _) in broken.items():
        shutil.copytree(two_runs / "run1", tmp_path / field)
        (tmp_path / field / "summary.json").write_text(json.dumps({**good, field: value}))
    code, out, err = run_cli("results", str(tmp_path), "format=csv", "sort=test")
    assert code == 0, err
    assert [r["run"] for r in csv.DictReader(io.StringIO(out))] == [str(tmp_path / "good")]
    words = " ".join(err.split())
    for field, (_, problem) in broken.items():
        assert (f"warning: skipped: {tmp_path / field / 'summary.json'} has a field of the wrong type: "
                f"{problem}.") in words
    assert "Traceback" not in out + err


def test_results_errors(run_cli, tmp_path):
    code, _, err = run_cli("results", str(tmp_path))
    assert code == 2 and "No summary.json" in err
    code, _, err = run_cli("results", str(tmp_path), "sort=nope")
    assert code == 2
    code, _, err = run_cli("results")
    assert code == 2 and "needs run or sweep dirs" in err


def test_budget_scales_iterations_cadence_and_schedule():
    from metafsl.api import apply_budget

    cfg = {"budget": 0.1, "trainer": {"iterations": 20000, "val_every": 1000, "log_every": 50,
                                      "scheduler": {"_target_": "StepLR", "step_size": 2000, "gamma": 0.5,
                                                    "lr_lambda": {"milestones": [20000, 40000]}}}}
    out = apply_budget(cfg)
    tr = out["trainer"]
    assert (tr["iterations"], tr["val_every"], tr["log_every"]) == (2000, 100, 5)
    assert tr["scheduler"]["step_size"] == 200 and tr["scheduler"]["gamma"] == 0.5
    assert tr["scheduler"]["lr_lambda"]["milestones"] == [2000, 4000]
    assert cfg["trainer"]["iterations"] == 20000  # the input is not modified
    assert apply_budget({"budget": 1.0, "trainer": {}}) == {"budget": 1.0, "trainer": {}}


def test_piecewise_constant_schedule():
    from metafsl.engine.schedules import PiecewiseConstant

    f = PiecewiseConstant([20, 40, 50], [1.0, 0.06, 0.012, 0.0024])
    assert [f(0), f(19), f(20), f(45), f(50), f(99)] == [1.0, 1.0, 0.06, 0.012, 0.0024, 0.0024]
