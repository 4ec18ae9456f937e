"""Experiment presets, tables and `metafsl reproduce` (budgeted runs, resume, comparison)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from metafsl.conf import CONF_DIR, group_options

EXPERIMENTS = group_options("experiment")
TABLES = sorted(p.stem for p in (CONF_DIR / "table").glob("*.yaml"))
PAPER_TABLES = ["snell2017_omniglot", "snell2017_miniimagenet", "finn2017_omniglot", "finn2017_miniimagenet",
                "other_methods_5w1s"]


def _missing_options(preset: Path):
    """Group options a preset selects that are not (yet) in conf/."""
    doc = yaml.safe_load(preset.read_text())
    missing = []
    for item in doc.get("defaults", []):
        if isinstance(item, dict):
            for key, option in item.items():
                group = key.replace("override ", "").strip().lstrip("/")
                if not (CONF_DIR / group / f"{option}.yaml").is_file():
                    missing.append(f"{group}/{option}")
    return missing


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_preset_composes(name):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from metafsl.api import register_resolvers

    preset = CONF_DIR / "experiment" / f"{name}.yaml"
    missing = _missing_options(preset)
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}, not in conf/ yet")
    lines = preset.read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith(f"# metafsl train experiment={name}")  # the command that runs it
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=[f"experiment={name}"])
    assert cfg.name == name
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if not name.startswith("demo_"):
        pub = resolved["published"]
        assert pub["citation"]
        # zoo_ presets cover methods whose paper reports no such figure, _pretrain_ presets the
        # first stage of a two-stage recipe (a backbone, no figure of its own); they say so
        if pub["acc"] is None:
            assert name.startswith(("zoo_", "pretrained_")) or "_pretrain_" in name, name
            assert pub["citation"].startswith("no published")
        else:
            assert 0 < pub["acc"] <= 100
        assert pub["ci95"] is None or 0 < pub["ci95"] < 5
        # a frozen pretrained backbone is evaluated without training (trainer.iterations=0)
        frozen = resolved["backbone"].get("freeze") and resolved["trainer"]["iterations"] == 0
        assert resolved["trainer"]["iterations"] >= 1000 or frozen


def test_paper_presets_follow_the_papers():
    """Spot checks of protocol and published numbers against Snell et al. / Finn et al."""
    def load(name):
        return yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text())

    s = load("snell2017_omniglot_5w1s")
    assert s["episode"]["train"] == {"n_way": 60, "n_shot": 1, "n_query": 5}
    assert s["published"] == {"acc": 98.8, "ci95": None, "citation": s["published"]["citation"]}
    # Snell et al. train on "1200 characters plus rotations": Vinyals' train + val characters.
    for shot in ("5w1s", "5w5s", "20w1s", "20w5s"):
        assert load(f"snell2017_omniglot_{shot}")["dataset"]["trainval"] is True
    assert load("snell2017_miniimagenet_5w1s")["episode"]["train"]["n_way"] == 30
    assert load("snell2017_miniimagenet_5w5s")["episode"]["train"]["n_way"] == 20
    assert load("snell2017_miniimagenet_5w5s")["published"]["acc"] == 68.20
    m = load("finn2017_maml_omniglot_20w1s")
    assert (m["algo"]["inner_lr"], m["algo"]["inner_steps"], m["trainer"]["meta_batch_size"]) == (0.1, 5, 16)
    assert (m["published"]["acc"], m["published"]["ci95"]) == (95.8, 0.3)
    mi = load("finn2017_fomaml_miniimagenet_5w5s")
    assert mi["algo"]["first_order"] is True and mi["backbone"]["hidden"] == 32
    assert (mi["trainer"]["meta_batch_size"], mi["published"]["acc"]) == (2, 63.15)


@pytest.mark.parametrize("table", TABLES)
def test_tables_name_existing_presets(table):
    from metafsl.commands.reproduce import load_table

    spec = load_table(table)
    assert spec.title and spec.rows
    for row in spec.rows:
        assert row.experiment in EXPERIMENTS or (spec.test_of_run and row.experiment is None)


def test_zoo_table_covers_every_method_on_the_same_test_episodes():
    """One row per algorithm, each its documented recipe, all tested on the same 600 episodes."""
    from metafsl.commands.reproduce import load_table, row_config, trainers

    spec = load_table("zoo_omniglot_5w1s")
    assert "trainer.max_minutes=8" in spec.overrides
    configs = [row_config(row, 1.0, []) for row in spec.rows]
    assert all(configs)
    names = [c["algo"]["name"] + ("_fo" if c["algo"].get("first_order") else "") for c in configs]
    assert sorted(r.label for r in spec.rows) == sorted(group_options("algo"))
    assert len(set(names)) == len(names)  # fomaml runs MAML's code with first_order
    for row, cfg in zip(spec.rows, configs):
        assert cfg["dataset"]["name"] == "omniglot" and cfg["dataset"]["split"] == "vinyals", row.label
        assert cfg["episode"]["test"] == {"n_way": 5, "n_shot": 1, "n_query": 15}, row.label
        assert (cfg["eval"]["seed"], cfg["eval"]["episodes"]) == (0, 600), row.label
        # a row's own override comes after the table's
        assert cfg["trainer"]["max_minutes"] == (30 if row.label == "mann" else 8), row.label
    assert len(set(trainers(spec.rows, configs).values())) == len(spec.rows)  # 14 trainings


def test_paper_tables_exist():
    from metafsl.commands.reproduce import load_table

    assert set(PAPER_TABLES) <= set(TABLES)
    assert len(load_table("snell2017_omniglot").rows) == 4
    assert len(load_table("finn2017_omniglot").rows) == 8


def test_unknown_table_and_bad_budget(run_cli):
    code, _, err = run_cli("reproduce", "table=nope")
    assert code == 2 and "Unknown table 'nope'" in err
    code, _, err = run_cli("reproduce", "table=test_glyphs", "budget=-1")
    assert code == 2 and "budget must be a positive" in err
    code, _, err = run_cli("reproduce")
    assert code == 2 and "needs a table" in err


def _read_csv(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_budgeted_table_end_to_end_then_skips_done_rows(run_cli, tmp_path):
    out = tmp_path / "rep"
    code, text, err = run_cli("reproduce", "table=test_glyphs", "budget=0.5", f"out={out}")
    assert code == 0, err
    assert "APPROXIMATE" in text
    rows = _read_csv(out / "table.csv")
    assert [r["row"] for r in rows] == ["protonet_glyphs_5w1s", "maml_glyphs_5w1s", "protonet_glyphs_5w5s"]
    proto = rows[0]
    summary = json.loads((out / "protonet_glyphs_5w1s" / "summary.json").read_text())
    assert summary["budget"] == 0.5 and summary["train"]["iterations"] == 4  # 8 scaled by 0.5
    acc, ci = summary["test"]["acc"], summary["test"]["ci95"]
    assert float(proto["our_acc"]) == pytest.approx(acc, abs=1e-3)
    assert float(proto["diff"]) == pytest.approx(acc - 50.0, abs=1e-3)
    assert proto["published_in_ci"] == str(abs(acc - 50.0) <= ci)
    assert proto["approximate"] == "True"
    assert rows[1]["published_acc"] == "" and rows[1]["published_in_ci"] == ""
    md = (out / "table.md").read_text()
    assert "APPROXIMATE" in md and "made-up number for tests" in md
    for row in ("protonet_glyphs_5w1s", "maml_glyphs_5w1s"):
        assert (out / row / ".hydra" / "config.yaml").is_file()
        assert (out / row / "curves.png").stat().st_size > 1000
    # The 5-shot row trains nothing: it tests the 1-shot row's model with its own episodes.
    assert "same training as protonet_glyphs_5w1s" in text
    shared = json.loads((out / "protonet_glyphs_5w5s" / "summary.json").read_text())
    assert not (out / "protonet_glyphs_5w5s" / "checkpoints").exists()
    assert shared["trained_by"] == "protonet_glyphs_5w1s" and rows[2]["trained_by"] == "protonet_glyphs_5w1s"
    assert shared["episode"]["test"]["n_shot"] == 5 and shared["test"]["episodes"] == 8
    assert shared["test"]["iteration"] == summary["test"]["iteration"]
    assert shared["published"]["acc"] == 60.0 and float(rows[2]["published_acc"]) == 60.0
    assert float(rows[2]["our_acc"]) == pytest.approx(shared["test"]["acc"], abs=1e-3)
    assert "model of protonet_glyphs_5w1s" in md
    # Rerun: every row is done and skipped, the table is rebuilt the same.
    mtime = (out / "protonet_glyphs_5w1s" / "summary.json").stat().st_mtime
    code, text, _ = run_cli("reproduce", "table=test_glyphs", "budget=0.5", f"out={out}")
    assert code == 0 and text.count("done, skipped") == 3
    assert (out / "protonet_glyphs_5w1s" / "summary.json").stat().st_mtime == mtime
    # Different settings in the same dir are refused.
    code, _, err = run_cli("reproduce", "table=test_glyphs", "budget=0.25", f"out={out}")
    assert code == 2 and "use the same settings" in err


def test_interrupted_reproduction_resumes(run_cli, tmp_path, monkeypatch):
    """Ctrl-C right after the first last.pt of a row stops the reproduction; rerunning the same
    command resumes that row from its checkpoint instead of starting over."""
    from metafsl.engine import checkpoint

    out = tmp_path / "rep"
    args = ("reproduce", "table=test_glyphs", f"out={out}", "rows=protonet_glyphs_5w1s")
    save = checkpoint.save

    def save_then_interrupt(path, payload):
        save(path, payload)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    code, _, err = run_cli(*args)
    assert code == 130 and "Interrupted" in err
    row = out / "protonet_glyphs_5w1s"
    assert checkpoint.load(row / "checkpoints" / "last.pt")["iteration"] == 4
    assert not (row / "summary.json").exists() and not (out / "table.md").exists()
    monkeypatch.setattr(checkpoint, "save", save)
    code, text, err = run_cli(*args)
    assert code == 0, err
    assert "resuming" in text and "Resuming" in text and "from iteration 4" in text
    summary = json.loads((row / "summary.json").read_text())
    assert summary["train"]["iterations"] == 8 and "budget" not in summary
    iters = [json.loads(x)["iteration"] for x in (row / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert iters == sorted(set(iters)) and iters[-1] == 8  # no duplicated records after the resume
    assert "protonet_glyphs_5w1s" in (out / "table.md").read_text()


def test_a_rerun_redoes_rows_whose_summary_was_cut_short(run_cli, tmp_path):
    """A row's summary.json cut short is kept aside and the row redone: the training row resumes
    from its last.pt (same result), the row that tests its model tests it again.  A manifest cut
    short is one sentence."""
    out = tmp_path / "rep"
    args = ("reproduce", "table=test_glyphs", "budget=0.5", f"out={out}",
            "rows=protonet_glyphs_5w1s,protonet_glyphs_5w5s")
    assert run_cli(*args)[0] == 0
    rows = [out / "protonet_glyphs_5w1s", out / "protonet_glyphs_5w5s"]
    before = [json.loads((r / "summary.json").read_text())["test"] for r in rows]
    for row in rows:
        text = (row / "summary.json").read_text()
        (row / "summary.json").write_text(text[: len(text) // 2])
    code, text, err = run_cli(*args)
    assert code == 0, err
    words = " ".join(text.split())
    for row in rows:
        assert (f"warning: {row / 'summary.json'} is unreadable or corrupt (JSONDecodeError); kept as "
                "summary.json.unreadable, the row is redone.") in words
        assert (row / "summary.json.unreadable").is_file()
    assert "protonet_glyphs_5w1s: resuming" in words and "same training as protonet_glyphs_5w1s" in words
    after = [json.loads((r / "summary.json").read_text())["test"] for r in rows]
    assert [t["acc"] for t in after] == [t["acc"] for t in before]
    assert [r["our_acc"] != "" for r in _read_csv(out / "table.csv")] == [True, True]
    manifest = out / "reproduce.json"
    manifest.write_text(manifest.read_text()[:10])
    code, _, err = run_cli(*args)
    assert code == 2 and "Traceback" not in err
    assert (f"{manifest} is unreadable or corrupt (JSONDecodeError), so the settings the rows in {out} were "
            "computed with are unknown; delete it to continue them with these settings, or pass "
            "out=<another dir>.") in " ".join(err.split())
    manifest.unlink()
    code, text, err = run_cli(*args)
    assert code == 0 and text.count("done, skipped") == 2, err


def test_snell_omniglot_table_is_two_trainings():
    """Snell et al. train one model per shot and test it at 5 and 20 ways: the presets differ only
    in their test episodes, so the reproduction trains twice, not four times."""
    from metafsl.commands.reproduce import load_table, row_config, trainers

    spec = load_table("snell2017_omniglot")
    configs = [row_config(row, 1.0, ["paths.data_dir=/nowhere"]) for row in spec.rows]
    assert all(configs)
    assert trainers(spec.rows, configs) == {
        "snell2017_omniglot_5w1s": "snell2017_omniglot_5w1s", "snell2017_omniglot_20w1s": "snell2017_omniglot_5w1s",
        "snell2017_omniglot_5w5s": "snell2017_omniglot_5w5s", "snell2017_omniglot_20w5s": "snell2017_omniglot_5w5s"}
    # Rows that train differently keep their own training.
    finn = load_table("finn2017_omniglot")
    owners = trainers(finn.rows, [row_config(row, 1.0, []) for row in finn.rows])
    assert len(set(owners.values())) == len(finn.rows)
