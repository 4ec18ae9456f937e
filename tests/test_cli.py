"""End to end through the real entry point on tiny glyphs runs: train, test, resume, sweep,
list, data, and every user error (one sentence, non-zero exit, no traceback)."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, TINY_DATA, killed_training, split_table


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """One tiny ProtoNet run shared by the tests that only read it."""
    from metafsl.cli import main

    run = tmp_path_factory.mktemp("run") / "protonet"
    assert main(["train", f"hydra.run.dir={run}", *TINY]) == 0
    return run


def test_help_is_instant_and_imports_nothing_heavy():
    code = ("import sys; from metafsl.cli import main; main(['--help']); main(['list', 'algo']);"
            "print('HEAVY', sorted(m for m in ('torch', 'hydra', 'learn2learn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: metafsl" in out and "protonet" in out
    assert "HEAVY []" in out


def test_train_writes_a_complete_run_dir(trained):
    run = trained
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val"}
    assert [r["iteration"] for r in records if r["split"] == "val"] == [3, 6]
    s = json.loads((run / "summary.json").read_text())
    assert (s["algo"], s["dataset"], s["backbone"]) == ("protonet", "glyphs", "conv4")
    assert s["episode"]["test"] == {"n_way": 5, "n_shot": 1, "n_query": 5}
    assert s["train"]["iterations"] == 6 and s["train"]["seconds"] > 0
    assert s["val"]["best_iteration"] in (3, 6) and 0 <= s["val"]["best_acc"] <= 100
    assert s["test"]["episodes"] == 8 and 20 <= s["test"]["acc"] <= 100 and s["test"]["ci95"] > 0
    ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ck["config"]["algo"]["name"] == "protonet" and ck["iteration"] == s["val"]["best_iteration"]
    assert "optimizer" in ck and ck["best"]["acc"] == s["val"]["best_acc"]


def test_test_command_reuses_saved_config_with_overrides(trained, run_cli):
    code, out, err = run_cli("test", f"run={trained}", "episode=5w5s", "eval.episodes=6")
    assert code == 0, err
    assert "5-way 5-shot" in out
    s = json.loads((trained / "summary.json").read_text())
    rec = s["tests"][-1]
    assert rec["episode"]["n_shot"] == 5 and rec["episodes"] == 6 and rec["dataset"] == "glyphs"
    assert 20 <= rec["acc"] <= 100
    # A different seed gives different episodes; the same seed, the same accuracy.
    code, _, _ = run_cli("test", f"run={trained}", "episode=5w5s", "eval.episodes=6")
    s = json.loads((trained / "summary.json").read_text())
    assert s["tests"][-1]["acc"] == rec["acc"]
    assert s["test"]["episodes"] == 8  # the training-time result is kept


def _train_args(run_dir: Path, *extra: str) -> list[str]:
    return ["train", f"hydra.run.dir={run_dir}", *TINY, "trainer.iterations=8", "trainer.val_every=2",
            "trainer.log_every=1", *extra]


def _killed_train(run_dir: Path, *extra: str, fault: tuple[str, int]):
    """A real training process killed at ``fault=(event, iteration)`` (conftest.killed_training:
    one thread, like the in-process runs it is compared with, so the arithmetic matches)."""
    return killed_training(*fault, _train_args(run_dir, *extra))


def test_resume_after_a_kill_ends_like_an_uninterrupted_run(tmp_path, run_cli):
    code, _, err = run_cli(*_train_args(tmp_path / "full"))
    assert code == 0, err
    code, output = _killed_train(tmp_path / "crash", fault=("iteration_end", 5))
    assert code == 75, output
    assert not (tmp_path / "crash" / "summary.json").exists()
    assert torch.load(tmp_path / "crash" / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 4
    code, out, err = run_cli(*_train_args(tmp_path / "crash", "resume=true"))
    assert code == 0, err
    assert "Resuming" in out
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "crash" / "summary.json").read_text())
    assert a["test"]["acc"] == b["test"]["acc"] and a["val"] == b["val"]
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "seconds"}  # noqa: E731
                       for x in p.read_text().splitlines()]
    assert strip(tmp_path / "full" / "metrics.jsonl") == strip(tmp_path / "crash" / "metrics.jsonl")
    wa = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "crash" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_kill_during_the_final_validation_keeps_the_training(tmp_path, run_cli):
    """The final iteration's weights are on disk before the final validation starts; resuming
    validates them and finishes the run (here the only validation: val_every > iterations)."""
    run_dir = tmp_path / "run"
    code, output = _killed_train(run_dir, "trainer.val_every=100", fault=("final_validation_start", -1))
    assert code == 75, output
    assert not (run_dir / "checkpoints" / "best.pt").exists()
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 8
    code, _, err = run_cli(*_train_args(run_dir, "trainer.val_every=100", "resume=true"))
    assert code == 0, err
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["train"]["iterations"] == 8 and s["val"]["best_iteration"] == 8
    assert s["test"]["iteration"] == 8
    code, _, err = run_cli(*_train_args(tmp_path / "full", "trainer.val_every=100"))
    assert code == 0, err
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["test"]["acc"] == s["test"]["acc"]


def test_maml_trains_and_tests(tmp_path, run_cli):
    code, out, err = run_cli("train", f"hydra.run.dir={tmp_path}", "algo=maml", "trainer.meta_batch_size=2",
                             "algo.first_order=true", *TINY)
    assert code == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["algo"] == "maml" and s["test"]["acc"] > 0


def test_list_and_data(run_cli):
    code, out, _ = run_cli("list")
    assert code == 0
    for word in ("dataset", "glyphs", "omniglot", "backbone", "conv4", "resnet12", "algo", "maml",
                 "protonet", "episode", "20w5s", "trainer", "eval", "table", "zoo_omniglot_5w1s"):
        assert word in out
    code, out, _ = run_cli("list", "table")  # the tables of metafsl reproduce, with what they hold
    assert code == 0 and "snell2017_omniglot" in out and "Prototypical" in out and "dataset" not in out
    code, out, _ = run_cli("data", *TINY_DATA)
    assert code == 0 and "1x28x28" in out
    assert split_table(out) == {"train": {"classes": 38, "images": 760}, "val": {"classes": 10, "images": 200},
                                "test": {"classes": 12, "images": 240}}


def _err(result):
    code, out, err = result
    assert code != 0
    assert "Traceback" not in out + err
    return (out + err).replace("\n", " ")


def test_user_errors_are_one_clear_sentence(tmp_path, run_cli, trained):
    assert "Unknown algo 'nope'; choose one of: anil, baseline" in _err(run_cli("train", "algo=nope"))
    assert "Unknown dataset 'imagenet9'" in _err(run_cli("train", "dataset=imagenet9"))
    assert "Unknown command 'trian'" in _err(run_cli("trian"))
    assert "Unknown option 'trainer.iteratons'; 'trainer' has: checkpoint_every_minutes, fit_to_budget, grad_clip, iterations," in _err(
        run_cli("train", "trainer.iteratons=3"))
    assert "trainer.iterations must be an integer (got 'abc')" in _err(run_cli("train", "trainer.iterations=abc"))
    # Hydra's multi-line configuration errors become one line, exit code 2
    for bad in (["trainer.iteratons=3"], ["algo.backend=vmap"], ["algo.inner_lr=[1"]):
        code, out, err = run_cli("train", *bad)
        text = (out + err).strip()
        assert code == 2 and "HYDRA_FULL_ERROR" not in text and len(text.splitlines()) <= 3, text
    assert "Unknown option 'algo.backend'; 'algo' has: distance, metric_scale, name, scale_init, temperature" in _err(
        run_cli("train", "algo.backend=vmap"))
    assert "Cannot parse the override 'algo.inner_lr=[1'" in _err(run_cli("train", "algo.inner_lr=[1"))
    msg = _err(run_cli("train", f"hydra.run.dir={tmp_path / 'a'}", *TINY, "episode.train.n_way=80"))
    assert "Impossible episode: n_way=80" in msg
    msg = _err(run_cli("train", f"hydra.run.dir={tmp_path / 'b'}", *TINY, "episode.test.n_query=40"))
    assert "Impossible episode" in msg and "images per class" in msg
    msg = _err(run_cli("train", f"hydra.run.dir={tmp_path / 'c'}", "dataset=omniglot",
                       f"paths.data_dir={tmp_path / 'nodata'}"))
    assert "not found under" in msg and "images_background.zip" in msg
    assert "does not combine with a sweep" in _err(run_cli("sweep", "algo=maml,protonet", "--cfg", "job"))
    assert "needs the run to evaluate" in _err(run_cli("test"))
    assert "does not exist" in _err(run_cli("test", f"run={tmp_path / 'missing'}"))
    assert "Nothing to resume" in _err(run_cli("train", f"hydra.run.dir={tmp_path / 'd'}", *TINY, "resume=true"))
    assert "already holds a run" in _err(run_cli("train", f"hydra.run.dir={trained}", *TINY))
    assert "no CUDA GPU" in _err(run_cli("train", f"hydra.run.dir={tmp_path / 'e'}", *TINY, "device=cuda")) \
        or torch.cuda.is_available()


def test_missing_or_corrupt_checkpoint_is_a_user_error(tmp_path, run_cli, trained):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    (copy / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    assert "unreadable or corrupt" in _err(run_cli("test", f"run={copy}"))
    (copy / "checkpoints" / "best.pt").unlink()
    assert "does not exist" in _err(run_cli("test", f"run={copy}"))


def test_checkpoint_that_does_not_fit_its_model_is_a_user_error(tmp_path, run_cli, trained):
    """Weights from another version or config (e.g. a MANN checkpoint from before input_norm)
    fail with one sentence in test, predict and resume, not with torch's traceback."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    (copy / "summary.json").unlink()  # an unfinished run: resume=true loads last.pt
    for name in ("best.pt", "last.pt"):
        path = copy / "checkpoints" / name
        ck = torch.load(path, weights_only=True)
        first = next(iter(ck["model"]))
        ck["model"]["extra.weight"] = ck["model"].pop(first)
        torch.save(ck, path)
    for err in (_err(run_cli("test", f"run={copy}")),
                _err(run_cli("train", f"hydra.run.dir={copy}", *TINY, "resume=true")),
                _err(run_cli("predict", f"run={copy}", f"support={copy}", f"query={copy}"))):
        assert f"does not fit the model built from its config: weights 1 missing (e.g. {first}), " \
               "1 unexpected (e.g. extra.weight)" in err, err


def test_configs_are_packaged_for_a_non_editable_install(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("metafsl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = REPO / "src" / "metafsl" / "conf"
    for yaml in conf.rglob("*.yaml"):
        assert f"metafsl/conf/{yaml.relative_to(conf).as_posix()}" in names
    assert "metafsl/data/splits/omniglot_vinyals.txt" in names


def test_trainval_trains_on_training_and_validation_classes(run_cli, tmp_path):
    """dataset.trainval=true: the val classes join the training split (Snell et al.'s final
    models); no validation runs and the last checkpoint is the one tested."""
    from metafsl.data import load_dataset

    paths = {"cache_dir": str(tmp_path / "cache")}
    cfg = {"name": "glyphs", "n_classes": 60, "examples_per_class": 20, "image_size": 28, "seed": 0,
           "train_fraction": 0.64, "val_fraction": 0.16}
    plain = load_dataset(cfg, paths)
    merged = load_dataset({**cfg, "trainval": True}, paths)
    assert "val" not in merged.splits and torch.equal(merged["test"].images, plain["test"].images)
    tr, va = plain["train"], plain["val"]
    assert merged["train"].n_classes == tr.n_classes + va.n_classes
    assert merged["train"].class_names == tr.class_names + va.class_names
    assert torch.equal(merged["train"].counts(), torch.cat([tr.counts(), va.counts()]))
    first_val = merged["train"].images[merged["train"].labels == tr.n_classes]
    assert torch.equal(first_val, va.images[va.labels == 0])
    code, _, err = run_cli("train", f"hydra.run.dir={tmp_path / 'run'}", *TINY, "dataset.trainval=true")
    assert code == 0, err
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["val"]["best_acc"] is None and s["test"]["iteration"] == s["train"]["iterations"]
    assert s["test"]["checkpoint"] == "last"  # no validation: the tested model is the last one
    assert not [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
                if r["split"] == "val"]
