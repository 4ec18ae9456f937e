"""Lake et al. (2015) one-shot classification runs: reading all_runs.zip, scoring, and
`metafsl test protocol=lake20` end to end; plus the stand-in builder script."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import torch

import data_fixtures as fx
from conftest import REPO, TINY, load_script
from metafsl.data.lake_runs import read_runs
from metafsl.data.sampler import Preprocess
from metafsl.engine.protocols import paired_difference, score_runs
from metafsl.errors import UserError


def test_read_runs_zip_and_folder(tmp_path):
    z = fx.lake_runs(tmp_path / "all_runs.zip", n_runs=2)
    runs = read_runs(z, image_size=28)
    assert [r.name for r in runs] == ["run01", "run02"]
    r = runs[0]
    assert r.support.shape == (20, 1, 28, 28) and r.query.shape == (20, 1, 28, 28)
    assert sorted(r.answers.tolist()) == list(range(20))
    # the answer of item01 is what class_labels.txt says
    first = zipfile.ZipFile(z).read("run01/class_labels.txt").decode().splitlines()[0].split()
    assert first[0] == "run01/test/item01.png" and r.answers[0] == int(first[1][-6:-4]) - 1
    folder = tmp_path / "extracted"
    zipfile.ZipFile(z).extractall(folder / "all_runs")
    again = read_runs(folder, image_size=28)  # runs under a top folder are found too
    assert torch.equal(again[1].support, runs[1].support)


def test_inversion_and_task(tmp_path):
    z = fx.lake_runs(tmp_path / "all_runs.zip", n_runs=1, same_images=True)
    run = read_runs(z, image_size=105)[0]
    assert float((run.support == 0).float().mean()) > 0.6  # ink bright on black after inverting
    raw = read_runs(z, image_size=105, invert=False)[0]
    assert torch.equal(raw.support, 255 - run.support)
    task = run.task(Preprocess(), "cpu")
    assert task.support_x.shape == (1, 20, 1, 105, 105) and task.n_way == 20 and task.n_query == 1
    assert task.query_y.tolist() == [list(range(20))]  # queries sorted by answer
    assert torch.equal(task.query_x[0, 3], task.support_x[0, 3])  # same image: item of class 4


class Nearest(torch.nn.Module):
    """Nearest training image in pixel space; stands in for a learner (query logits per task)."""

    adapts_with_gradients = False

    def check_episode(self, n_way, train):
        pass

    def episode_logits(self, batch):  # 1-shot, support in class order: logit of class c = -distance to it
        return -torch.cdist(batch.query_x.flatten(2), batch.support_x.flatten(2))


def test_score_runs_counts_errors(tmp_path):
    same = read_runs(fx.lake_runs(tmp_path / "a.zip", n_runs=3, same_images=True), image_size=16)
    res = score_runs(Nearest(), same, Preprocess(), "cpu")
    assert res == {"error": 0.0, "acc": 100.0, "ci95": 0.0, "trials": 60, "runs": 3,
                   "per_run_error": {"run01": 0.0, "run02": 0.0, "run03": 0.0}}
    # corrupt the answers of run02: 20 wrong of 60 trials
    same[1].answers = (same[1].answers + 1) % 20
    res = score_runs(Nearest(), same, Preprocess(), "cpu")
    assert res["per_run_error"]["run02"] == 100.0 and res["error"] == pytest.approx(100 / 3, abs=1e-3)
    # the interval counts runs (0, 100, 0: std 57.7), not the 60 trials as if independent
    assert res["ci95"] == pytest.approx(1.96 * 57.735 / 3 ** 0.5, abs=1e-2)


def test_paired_difference_cancels_what_the_runs_share():
    a = {"run01": 10.0, "run02": 50.0, "run03": 30.0}
    b = {"run01": 5.0, "run02": 45.0, "run03": 20.0, "run04": 0.0}  # run04: not in a, left out
    d = paired_difference(a, b)
    assert d["difference"] == pytest.approx(-20 / 3, abs=1e-3) and d["runs"] == 3
    assert d["ci95"] == pytest.approx(1.96 * 2.8868 / 3 ** 0.5, abs=1e-3)  # std of (-5, -5, -10)
    assert paired_difference(a, {k: v + 5 for k, v in a.items()}) == {"difference": 5.0, "ci95": 0.0, "runs": 3}
    with pytest.raises(UserError, match="share no run"):
        paired_difference(a, {"run09": 1.0})


def test_lake_compare_script(tmp_path, capsys):
    recs = []
    for i, errs in enumerate([(10.0, 50.0, 30.0), (5.0, 45.0, 20.0)]):
        recs.append(tmp_path / f"r{i}.json")
        recs[-1].write_text(json.dumps({"protocol": "lake20", "error": sum(errs) / 3, "overrides": ["eval.tta=5"],
                                        "per_run_error": {f"run0{k + 1}": e for k, e in enumerate(errs)}}))
    script = load_script("lake_compare")  # in process: no interpreter start per call
    assert script.main([*map(str, recs), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == f"| {recs[0]} | tta=5 | 30.00 ± 22.63 | (base) | 3 |"
    assert lines[3] == f"| {recs[1]} | tta=5 | 23.33 ± 22.87 | -6.67 ± 3.27 | 3 |"
    # a run dir: each of its lake20 tests, compared with the base's test of the same settings
    run = tmp_path / "run"
    run.mkdir()
    tests = [{"acc": 90.0, "ci95": 1.0}, {**json.loads(recs[1].read_text()), "overrides": []},
             {**json.loads(recs[1].read_text()), "tta": 5},
             {**json.loads(recs[0].read_text()), "ensemble": ["/runs/feat"]},  # two models vote: no base alike
             {**json.loads(recs[1].read_text()), "finetune": {"steps": 10, "lr": 1e-5, "views": "train"}},
             {**json.loads(recs[1].read_text()), "tta": 5, "tta_rotations": 4}]
    (run / "summary.json").write_text(json.dumps({"tests": tests}))
    assert script.main([str(recs[0]), str(run), "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[3:] == [f"| {run} #1 | tta=1 | 23.33 ± 22.87 | (no base test alike) | 3 |",
                       f"| {run} #2 | tta=5 | 23.33 ± 22.87 | -6.67 ± 3.27 | 3 |",
                       f"| {run} #3 | tta=5, with feat | 30.00 ± 22.63 | (no base test alike) | 3 |",
                       f"| {run} #4 | tta=5, fine-tuned 10 steps, lr 1e-05, train views | 23.33 ± 22.87 "
                       "| (no base test alike) | 3 |",
                       f"| {run} #5 | tta=5, 4 rotations | 23.33 ± 22.87 | (no base test alike) | 3 |"]
    (tmp_path / "other.json").write_text(json.dumps({"acc": 90.0}))
    assert script.main([str(recs[0]), str(tmp_path / "other.json")]) == 2  # one sentence, no traceback
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'other.json'} holds no lake20 test record (no per_run_error)."


def test_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="Lake runs not found at"):
        read_runs(tmp_path / "all_runs.zip", 28)
    empty = fx.zip_folder(tmp_path, tmp_path / "empty.zip")
    with pytest.raises(UserError, match="No runNN/class_labels.txt"):
        read_runs(empty, 28)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("run01/class_labels.txt", "run01/test/item01.png run01/training/class01.png\n")
        z.writestr("run01/training/class01.png", fx.CORRUPT)
        z.writestr("run01/test/item01.png", fx.glyph_png(0))
    with pytest.raises(UserError, match="Image run01/training/class01.png in .*bad.zip cannot be read"):
        read_runs(bad, 28)


@pytest.fixture(scope="session")
def glyph_run(tmp_path_factory):
    """A tiny glyphs ProtoNet run (28x28, ink bright like inverted Omniglot)."""
    from metafsl.cli import main
    run = tmp_path_factory.mktemp("lake") / "run"
    assert main(["train", *TINY, f"hydra.run.dir={run}"]) == 0
    return run


def test_protocol_through_metafsl_test(glyph_run, tmp_path, run_cli):
    z = fx.lake_runs(tmp_path / "all_runs.zip", n_runs=2, same_images=True)
    code, out, err = run_cli("test", f"run={glyph_run}", "protocol=lake20", f"protocol.root={z}")
    assert code == 0, err
    assert "run01" in out and "all (40 trials)" in out
    rec = json.loads((glyph_run / "summary.json").read_text())["tests"][-1]
    assert rec["protocol"] == "lake20" and rec["trials"] == 40 and rec["runs"] == 2
    assert rec["error"] == 0.0  # identical images: any fixed embedding matches them
    assert set(rec["per_run_error"]) == {"run01", "run02"}
    # a normal episodic test still works afterwards (protocol defaults to null)
    code, out, err = run_cli("test", f"run={glyph_run}")
    assert code == 0, err
    assert "protocol" not in json.loads((glyph_run / "summary.json").read_text())["tests"][-1]


def test_protocol_errors(glyph_run, tmp_path, run_cli):
    code, out, err = run_cli("test", f"run={glyph_run}", "protocol=lake20", f"protocol.root={tmp_path / 'x.zip'}")
    assert code == 2 and "Lake runs not found at" in err
    code, _out, err = run_cli("test", f"run={glyph_run}", "protocol=lake99")
    assert code == 2 and "Unknown protocol 'lake99'" in err


def test_standin_script(tmp_path):
    eval_alphabets = {f"Alpha{a}": 20 + a for a in range(3)}
    eval_alphabets["Short"] = 5  # fewer than 20 characters: not used
    root = fx.omniglot_set(tmp_path / "omniglot", "images_evaluation", eval_alphabets, drawers=3, as_zip=True)
    out = tmp_path / "standin.zip"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_lake_standin.py"), "--omniglot", str(root),
                    "--out", str(out)], check=True, capture_output=True)
    runs = read_runs(out, image_size=28)
    assert len(runs) == 20 and all(r.support.shape[0] == 20 for r in runs)
    names = zipfile.ZipFile(out).namelist()
    assert "run20/test/item20.png" in names and "run01/class_labels.txt" in names
    # each run: training images from one drawer, test images from another
    z = zipfile.ZipFile(out)
    training = {z.read(f"run01/training/class{k:02d}.png") for k in range(1, 21)}
    assert not training & {z.read(f"run01/test/item{k:02d}.png") for k in range(1, 21)}
    res = score_runs(Nearest(), runs, Preprocess(), "cpu")
    assert res["trials"] == 400


def _tiny_protonet():
    from torch import nn

    from metafsl.algorithms.protonet import ProtoNet

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(4),
                             nn.Flatten())
    return ProtoNet(backbone).eval()


def test_runs_fine_tuned_on_their_drawings_with_the_training_views(tmp_path):
    """eval.finetune_* on lake20: each model is fine-tuned on a run's 20 drawings (views drawn by
    the dataset's augmentation with eval.finetune_views=train, seeded per run) before it scores
    the run's trials, and its weights are put back afterwards."""
    from metafsl.engine.protocols import RunAdaptation, _probabilities

    runs = read_runs(fx.lake_runs(tmp_path / "a.zip", n_runs=2), image_size=16)
    algo, pre = _tiny_protonet(), Preprocess(augment="koch_stroke")
    weights = {k: v.clone() for k, v in algo.state_dict().items()}
    drawn = []
    own_views = pre.views
    pre.views = lambda x, g=None: drawn.append(len(x)) or own_views(x, g)
    members = [(algo, runs, pre, "cpu")]
    _, plain = _probabilities(members, 1, 1)
    adapt = RunAdaptation(steps=3, lr=0.5, views="train", seed=4)
    _, tuned = _probabilities(members, 1, 1, adapt)
    assert drawn == [20, 20, 20]  # one batch of views of the run's 20 drawings per step
    assert not torch.allclose(tuned, plain)
    assert all(torch.equal(v, algo.state_dict()[k]) for k, v in weights.items())
    _, again = _probabilities(members, 1, 1, adapt)
    assert torch.equal(again, tuned)  # the same views: the run's generator is seeded
    _, other_run = _probabilities(members, 0, 1, adapt)
    assert other_run.shape == tuned.shape
    # an augmentation drawing from torch's global generator (MetaOptNet's) is seeded per run too
    crops = [(algo, runs, Preprocess(augment="metaoptnet"), "cpu")]
    first, second = (_probabilities(crops, 1, 1, adapt)[1] for _ in range(2))
    assert torch.equal(first, second) and not torch.allclose(first, plain)
    res = score_runs(algo, runs, pre, "cpu", adapt=RunAdaptation(steps=2, lr=0.5))  # flips and shifts
    assert res["trials"] == 40 and set(res["per_run_error"]) == {"run01", "run02"}


def test_training_views_of_normalised_images(tmp_path):
    pre = Preprocess(mean=[0.5], std=[0.25], augment="koch_stroke")
    x = pre(torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8), False)
    views = pre.views(x, torch.Generator().manual_seed(0))
    assert views.shape == x.shape and not torch.allclose(views, x)
    pixels = views * 0.25 + 0.5  # back in [0, 1]: augmented where the pipeline augments, before normalising
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert torch.equal(pre.views(x, torch.Generator().manual_seed(0)), views)
    with pytest.raises(UserError, match="dataset.augment is none"):
        Preprocess().views(x)


def test_protocol_fine_tuned_through_metafsl_test(glyph_run, tmp_path, run_cli):
    z = fx.lake_runs(tmp_path / "all_runs.zip", n_runs=2)
    ask = ["test", f"run={glyph_run}", "protocol=lake20", f"protocol.root={z}", "eval.finetune_steps=2",
           "eval.finetune_lr=0.5", "eval.finetune_views=train"]
    code, _out, err = run_cli(*ask)
    assert code == 2 and "dataset.augment is none" in err and "Traceback" not in err
    code, out, err = run_cli(*ask, "dataset.augment=koch_stroke", "eval.tta=2")
    assert code == 0, err
    rec = json.loads((glyph_run / "summary.json").read_text())["tests"][-1]
    assert rec["finetune"] == {"steps": 2, "lr": 0.5, "views": "train"} and rec["tta"] == 2
    assert rec["trials"] == 40
    code, _out, err = run_cli("test", f"run={glyph_run}", "protocol=lake20", f"protocol.root={z}",
                              "eval.finetune_views=mirror")
    assert code == 2 and "eval.finetune_views must be one of" in err


def test_protocol_with_rotation_views_through_metafsl_test(glyph_run, tmp_path, run_cli):
    """eval.tta_rotations=4 on the runs: recorded, and a different score from the plain test where the
    turned runs vote differently; a choice outside 1, 2, 4 and fine-tuning with it: one sentence each."""
    z = fx.lake_runs(tmp_path / "all_runs.zip", n_runs=2)
    ask = ["test", f"run={glyph_run}", "protocol=lake20", f"protocol.root={z}"]
    assert run_cli(*ask)[0] == 0
    code, _out, err = run_cli(*ask, "eval.tta_rotations=4")
    assert code == 0, err
    plain, turned = json.loads((glyph_run / "summary.json").read_text())["tests"][-2:]
    assert turned["tta_rotations"] == 4 and "tta_rotations" not in plain and turned["trials"] == 40
    for bad, words in (("eval.tta_rotations=3", "eval.tta_rotations must be one of 1, 2, 4 (got 3)"),
                       ("eval.finetune_steps=2", "does not combine with per-episode adaptation")):
        extra = [bad] if "=3" in bad else [bad, "eval.tta_rotations=2"]
        code, _out, err = run_cli(*ask, *extra)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
