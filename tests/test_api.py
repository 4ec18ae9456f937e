"""The library surface under the CLI (metafsl.api), the typed RunSummary, the recipe's state,
and commands that now call the api instead of re-entering the command line."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import TINY


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    from metafsl import api

    run_dir = tmp_path_factory.mktemp("api") / "run"
    summary = api.train(api.compose("train", TINY), run_dir, overrides=TINY)
    assert summary.algo == "protonet" and summary.train["iterations"] == 6
    return run_dir


def test_train_returns_the_summary_it_wrote(run):
    from metafsl.engine.summary import RunSummary

    written = json.loads((run / "summary.json").read_text())
    assert RunSummary.read(run).to_dict() == written
    assert written["version"] == 2 and written["code_version"] and written["threads"] >= 1
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["version"] == 2 and ck["state"]["iteration"] == 6 and ck["state"]["val_iteration"] == 6
    assert ck["preprocessing"]["image_size"] == 28


def test_evaluate_appends_to_the_history(run, tmp_path):
    from metafsl import api

    before = len(json.loads((run / "summary.json").read_text()).get("tests", []))
    summary = api.evaluate(run, ["episode=5w5s", "eval.episodes=4"], out_dir=tmp_path / "t")
    assert len(summary.tests) == before + 1 and summary.tests[-1]["episode"]["n_shot"] == 5
    assert json.loads((tmp_path / "t" / "result.json").read_text())["acc"] == summary.tests[-1]["acc"]
    assert (tmp_path / "t" / ".hydra" / "config.yaml").is_file()
    for record in (summary.tests[-1], summary.test):  # this test's, and the training's final test
        for name in ("precision", "recall", "f1"):
            assert 0 <= record[f"macro_{name}"] <= 100 and record[f"macro_{name}_ci95"] >= 0
        assert record["macro_recall"] == pytest.approx(record["acc"], abs=1e-4)  # balanced episodes
    assert not (tmp_path / "t" / "per_class.csv").exists()  # glyphs: no named classes, no per-class report


def test_compose_errors_are_one_sentence():
    from metafsl import api
    from metafsl.errors import UserError

    with pytest.raises(UserError, match="Unknown algo 'nope'"):
        api.compose("train", ["algo=nope"])
    with pytest.raises(UserError, match="iteratons"):
        api.compose("train", ["trainer.iteratons=3"])


def test_summary_reads_old_files_and_keeps_unknown_keys(tmp_path):
    from metafsl.engine.summary import RunSummary
    from metafsl.errors import UserError

    old = {"algo": "maml", "dataset": "glyphs", "backbone": "conv4", "episode": {}, "seed": 0, "name": "",
           "published": {}, "train": {"iterations": 3}, "val": {"best_acc": 50.0, "best_iteration": 3},
           "test": {"acc": 40.0}, "tests": [{"acc": 41.0}], "from_the_future": [1, 2]}
    (tmp_path / "summary.json").write_text(json.dumps(old))
    s = RunSummary.read(tmp_path)
    assert s.version == 1 and s.best_acc == 50.0 and s.tests == [{"acc": 41.0}]
    s.add_test({"acc": 42.0})
    s.write(tmp_path)
    new = json.loads((tmp_path / "summary.json").read_text())
    assert new["from_the_future"] == [1, 2] and new["version"] == 2
    assert [t["acc"] for t in new["tests"]] == [41.0, 42.0]
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable or corrupt"):
        RunSummary.read(tmp_path)


def test_version_1_checkpoints_still_test_and_predict(run, tmp_path, run_cli):
    """Checkpoints from before the TrainState/preprocessing fields load (test, predict)."""
    import shutil

    from PIL import Image

    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    for name in ("best.pt", "last.pt"):
        path = copy / "checkpoints" / name
        ck = torch.load(path, weights_only=True)
        ck.pop("preprocessing")
        ck["version"] = 1
        ck["state"].pop("val_iteration")
        torch.save(ck, path)
    code, out, err = run_cli("test", f"run={copy}", "eval.episodes=4")
    assert code == 0, err
    for k in range(2):
        (tmp_path / "s" / f"c{k}").mkdir(parents=True)
        Image.new("L", (28, 28), 200 * k).save(tmp_path / "s" / f"c{k}" / "a.png")
    code, out, err = run_cli("predict", f"run={copy}", f"support={tmp_path / 's'}",
                             f"query={tmp_path / 's' / 'c1' / 'a.png'}")
    assert code == 0, err


def test_help_of_driver_commands(run_cli):
    for command in ("test", "demo", "predict", "reproduce"):
        code, out, err = run_cli(command, "--help")
        assert code == 0 and f"metafsl {command}" in out and "error" not in err


def test_demo_calls_the_api_and_leaves_argv_alone(tmp_path, run_cli):
    argv = list(sys.argv)
    code, out, err = run_cli("demo", f"out={tmp_path}", *TINY, "trainer.iterations=2", "trainer.val_every=2")
    assert code == 0, err
    assert sys.argv == argv
    rows = (tmp_path / "sweep_summary.csv").read_text().splitlines()
    assert len(rows) == 3 and "Sweep" in out
    for name in ("0_experiment=demo_protonet", "1_experiment=demo_maml"):
        s = json.loads((tmp_path / name / "summary.json").read_text())
        assert s["untrained"]["acc"] > 0 and s["test"]["acc"] > 0


def test_an_unreadable_summary_is_skipped_by_results(run, tmp_path, run_cli):
    import shutil

    shutil.copytree(run, tmp_path / "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{")
    code, out, err = run_cli("results", str(tmp_path))
    assert code == 0, err
    assert "skipped" in err and "bad" in " ".join(err.split())  # on stderr: stdout holds the table


def test_non_finite_names_the_first_bad_tensor():
    from metafsl.engine.checkpoint import non_finite

    ok = {"w": torch.ones(3), "grad": None, "steps": torch.tensor(3)}
    assert non_finite(ok) is None
    assert non_finite({**ok, "b": torch.tensor([1.0, float("nan")])}) == "b"
    assert non_finite({**ok, "c": torch.tensor([float("-inf")])}) == "c"
    assert non_finite({"huge": torch.full((4,), 3e38)}) is None  # an overflowing sum is not a NaN


def test_one_key_value_parser():
    from metafsl.arguments import boolean, last_value, parse
    from metafsl.errors import UserError

    own, rest = parse(["run='a b'", "episode=5w5s", "out=x", "out=y", "--cfg"], ("run", "out"), "test")
    assert own == {"run": "a b", "out": "y"} and rest == ["episode=5w5s", "--cfg"]
    with pytest.raises(UserError, match="Unknown argument 'bogus=1' for metafsl predict"):
        parse(["bogus=1"], ("run",), "predict", overrides=False)
    assert last_value(["paths.output_dir=a", "+paths.output_dir=b"], "paths.output_dir") == "b"
    assert boolean("overwrite", "yes") and not boolean("overwrite", None)
    with pytest.raises(UserError, match="overwrite must be true or false"):
        boolean("overwrite", "maybe")


def test_a_test_protocol_loads_no_dataset(run, tmp_path, run_cli, monkeypatch):
    """protocol=lake20 brings its own images: the learner comes from the checkpoint alone."""
    import data_fixtures as fx
    import metafsl.engine.components as components

    def no_data(*a, **k):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr(components, "load_dataset", no_data)
    z = fx.lake_runs(tmp_path / "all_runs.zip", n_runs=1, same_images=True)
    code, out, err = run_cli("test", f"run={run}", "protocol=lake20", f"protocol.root={z}")
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["tests"][-1]["protocol"] == "lake20"


def test_the_summary_names_the_code_the_run_started_with(tmp_path, monkeypatch):
    """A commit made while a run trains is not the code it ran: the summary's code_version is the
    one at the start."""
    from metafsl import api
    from metafsl.engine import summary
    from metafsl.engine.recipe import TrainRecipe

    trained = []
    train = TrainRecipe.train

    def train_then_note(self):
        train(self)
        trained.append(True)

    monkeypatch.setattr(TrainRecipe, "train", train_then_note)
    monkeypatch.setattr(summary, "code_version", lambda: "git:after" if trained else "git:at-start")
    written = api.train(api.compose("train", TINY), tmp_path / "run", overrides=TINY)
    assert trained and written.code_version == "git:at-start"
