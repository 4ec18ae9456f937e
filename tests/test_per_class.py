"""Macro precision / recall / F1 of test episodes and per-class reports (issue 28 §1): the
per-episode macro averaging against hand-computed numbers, both evaluation paths keeping the
same predictions, and through the real CLI on an easy `dataset=folder` (colour classes named
cat, dog, owl): `train`'s final test, `metafsl test`, and `metafsl predict` on labelled queries."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

#: one flat colour per class (train, val, test classes); every image is its colour plus a little noise
COLOURS = {"train": {"t0": (255, 0, 0), "t1": (0, 255, 0), "t2": (0, 0, 255), "t3": (255, 255, 0)},
           "val": {"v0": (0, 255, 255), "v1": (255, 0, 255), "v2": (128, 128, 128)},
           "test": {"cat": (255, 255, 255), "dog": (0, 0, 0), "owl": (255, 128, 0)}}
EPISODES, QUERIES = 4, 3
EASY = ["dataset=folder", "dataset.image_size=16", "backbone.hidden=8", "trainer=fast", "trainer.iterations=2",
        "trainer.val_every=2", "trainer.val_episodes=2", f"eval.episodes={EPISODES}", "episode=5w1s",
        "episode.train.n_way=3", "episode.test.n_way=3", f"episode.train.n_query={QUERIES}",
        f"episode.test.n_query={QUERIES}"]


def colour_png(path: Path, rgb, seed: int) -> None:
    noise = np.random.default_rng(seed).integers(-3, 4, (16, 16, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="session")
def easy_run(tmp_path_factory):
    """A protonet trained for 2 iterations on the colour classes (tested at the end of training)."""
    from metafsl.cli import main

    root = tmp_path_factory.mktemp("colours")
    seed = 0
    for split, classes in COLOURS.items():
        for name, rgb in classes.items():
            for i in range(6):
                colour_png(root / "data" / split / name / f"{i}.png", rgb, seed := seed + 1)
    run = root / "run"
    assert main(["train", *EASY, f"dataset.root={root / 'data'}", f"hydra.run.dir={run}"]) == 0
    return root, run


def _csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _check_report_files(folder: Path, prefix: str, supports) -> None:
    rows = _csv(folder / f"{prefix}per_class.csv")
    assert rows[0] == ["class", "precision_pct", "recall_pct", "f1_pct", "support"]
    assert {r[0]: int(r[4]) for r in rows[1:]} == supports
    assert all(float(x) == 100.0 for r in rows[1:] for x in r[1:4])  # an easy task: every query right
    matrix = _csv(folder / f"{prefix}confusion_matrix.csv")
    names = list(supports)
    assert matrix[0] == ["true \\ predicted", *names]
    assert [[int(x) for x in r[1:]] for r in matrix[1:]] == [
        [supports[n] if i == j else 0 for j in range(len(names))] for i, n in enumerate(names)]
    assert (folder / f"{prefix}confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- the numbers
def _hand_made():
    """Two 3-way episodes, 2 queries per class; episode 2 calls everything its first class."""
    from metafsl.engine.evaluate import EpisodePredictions

    labels = torch.tensor([[0, 0, 1, 1, 2, 2]] * 2)
    predicted = torch.tensor([[0, 0, 0, 1, 2, 2], [0, 0, 0, 0, 0, 0]])
    return EpisodePredictions(predicted, labels, classes=torch.tensor([[5, 2, 7], [2, 7, 9]]))


def test_macro_metrics_average_each_episode_then_the_episodes():
    from metafsl.engine.evaluate import scores

    # by hand, class by class (precision, recall): episode 1: class 0 (2/3, 1), class 1 (1, 1/2),
    # class 2 (1, 1); episode 2: class 0 (1/3, 1), classes 1 and 2 never predicted (0, 0)
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r else 0.0  # noqa: E731
    per_episode = {"precision": [(2 / 3 + 1 + 1) / 3, (1 / 3 + 0 + 0) / 3],
                   "recall": [(1 + 1 / 2 + 1) / 3, (1 + 0 + 0) / 3],
                   "f1": [(f1(2 / 3, 1) + f1(1, 1 / 2) + 1) / 3, f1(1 / 3, 1) / 3]}
    res = scores(_hand_made())
    assert res["episodes"] == 2 and res["acc"] == pytest.approx(100 * (5 / 6 + 2 / 6) / 2)
    for name, values in per_episode.items():
        pct = [100 * v for v in values]
        assert res[f"macro_{name}"] == pytest.approx(sum(pct) / 2, abs=1e-4), name
        std = abs(pct[0] - pct[1]) / math.sqrt(2)  # the sample standard deviation of two values
        assert res[f"macro_{name}_ci95"] == pytest.approx(1.96 * std / math.sqrt(2), abs=1e-4), name
    # balanced episodes: the macro recall is the accuracy
    assert res["macro_recall"] == pytest.approx(res["acc"])


def test_per_class_report_maps_episode_labels_to_the_split_classes():
    from metafsl.engine.evaluate import per_class
    from metafsl.engine.metrics import class_report_of_names

    split = type("Split", (), {"class_names": [f"c{i}" for i in range(10)]})()
    report = per_class(_hand_made(), split)
    # episode 1 draws split classes 5, 2, 7; episode 2 draws 2, 7, 9 (and calls every query c2)
    true = ["c5", "c5", "c2", "c2", "c7", "c7"] + ["c2", "c2", "c7", "c7", "c9", "c9"]
    pred = ["c5", "c5", "c5", "c2", "c7", "c7"] + ["c2"] * 6
    assert report.names == ["c2", "c5", "c7", "c9"] and report.support == [4, 2, 4, 2]
    assert report.confusion == [[3, 1, 0, 0], [0, 2, 0, 0], [2, 0, 2, 0], [2, 0, 0, 0]]
    assert report.precision == pytest.approx([100 * 3 / 7, 100 * 2 / 3, 100.0, 0.0])
    assert report.recall == pytest.approx([75.0, 100.0, 50.0, 0.0])
    assert report.f1 == pytest.approx([100 * 2 * (3 / 7) * 0.75 / (3 / 7 + 0.75), 80.0, 100 * 2 / 3, 0.0])
    assert class_report_of_names(true, pred, report.names) == report


def test_both_evaluation_paths_keep_the_same_predictions(monkeypatch):
    from metafsl.algorithms.protonet import ProtoNet
    from metafsl.data.base import from_class_lists
    from metafsl.data.sampler import EpisodeSampler
    from metafsl.engine import evaluate, fast_eval
    from metafsl.models import build_backbone

    torch.manual_seed(0)
    split = from_class_lists([torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8) for _ in range(6)],
                             [f"k{i}" for i in range(6)])
    algo = ProtoNet(build_backbone("conv4", channels=1, image_size=12, hidden=4, layers=2)).eval()
    spec = evaluate.EvalSpec(3, 2, 2, episodes=7, seed=3, batch_episodes=3)
    fast = evaluate.predict_episodes(algo, split, spec)
    monkeypatch.setattr(fast_eval, "supported", lambda algorithm: False)
    slow = evaluate.predict_episodes(algo, split, spec)
    assert torch.equal(fast.predicted, slow.predicted) and torch.equal(fast.classes, slow.classes)
    assert fast.predicted.shape == (7, 6) and fast.labels.tolist()[0] == [0, 0, 1, 1, 2, 2]
    reference = algo.evaluate(EpisodeSampler(split, 3, 2, 2, seed=3).sample(7))
    torch.testing.assert_close(slow.accuracies(), reference)


# ----------------------------------------------------------------------------- through the CLI
def test_final_test_of_a_folder_run_reports_per_class(easy_run):
    _, run = easy_run
    test = json.loads((run / "summary.json").read_text())["test"]
    assert test["acc"] == 100.0
    for name in ("precision", "recall", "f1"):
        assert test[f"macro_{name}"] == pytest.approx(100.0) and test[f"macro_{name}_ci95"] == pytest.approx(0.0)
    _check_report_files(run, "", {n: EPISODES * QUERIES for n in COLOURS["test"]})


def test_metafsl_test_writes_the_report_in_its_record_dir(easy_run, run_cli):
    _, run = easy_run
    code, out, err = run_cli("test", f"run={run}", "eval.episodes=2")
    assert code == 0, err
    assert "macro F1 (%)" in out and "Per class: 3 classes, 18 test queries" in out and "Confusion matrix" in out
    (record_dir,) = (run / "tests").iterdir()
    result = json.loads((record_dir / "result.json").read_text())
    assert result["macro_precision"] == pytest.approx(100.0) and result["acc"] == 100.0
    assert json.loads((run / "summary.json").read_text())["tests"][-1]["macro_f1"] == result["macro_f1"]
    _check_report_files(record_dir, "", {n: 2 * QUERIES for n in COLOURS["test"]})


def test_predict_on_labelled_queries_writes_the_report(easy_run, run_cli):
    root, run = easy_run
    for k, (name, rgb) in enumerate(COLOURS["test"].items()):
        for i in range(2):
            colour_png(root / "support" / name / f"{i}.png", rgb, 100 + 10 * k + i)
        for i in range(k + 1):  # supports 1, 2, 3
            colour_png(root / "query" / name / f"{i}.png", rgb, 200 + 10 * k + i)
    out = root / "preds.csv"
    code, text, err = run_cli("predict", f"run={run}", f"support={root / 'support'}", f"query={root / 'query'}",
                              f"out={out}")
    assert code == 0, err
    assert "Per class: 3 classes, 6 labelled queries" in text
    _check_report_files(root, "preds_", {"cat": 1, "dog": 2, "owl": 3})
    code, _, err = run_cli("predict", f"run={run}", f"support={root / 'support'}", f"query={root / 'query'}",
                           f"out={root / 'other.csv'}")
    assert code == 0, err
    (root / "other.csv").unlink()  # its report files stay: a new predictions file may not replace them
    code, _, err = run_cli("predict", f"run={run}", f"support={root / 'support'}", f"query={root / 'query'}",
                           f"out={root / 'other.csv'}")
    assert code == 2 and "other_per_class.csv already exists" in err and not (root / "other.csv").exists()


def test_the_metrics_are_torchmetrics_definitions():
    """Our counting against torchmetrics (the dev dependency) on random episodes: 5-way with 3
    labels and 4 predictions drawn from 0..4 (absent and never-predicted classes), and a report."""
    from torchmetrics.functional.classification import (
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    from metafsl.engine.metrics import class_report, macro_per_episode

    fns = {"precision": multiclass_precision, "recall": multiclass_recall, "f1": multiclass_f1_score}
    g = torch.Generator().manual_seed(0)
    for labels_from, predicted_from in [(5, 5), (3, 5), (5, 2)]:
        labels = torch.randint(0, labels_from, (40, 6), generator=g)
        predicted = torch.randint(0, predicted_from, (40, 6), generator=g)
        ours = macro_per_episode(predicted, labels, 5)
        for name, fn in fns.items():
            ref = fn(predicted, labels, num_classes=5, average="macro", multidim_average="samplewise")
            torch.testing.assert_close(ours[name], ref.float(), rtol=0, atol=1e-6, msg=name)
        report = class_report(labels.flatten(), predicted.flatten(), list("abcde"))
        assert report.confusion == multiclass_confusion_matrix(predicted.flatten(), labels.flatten(), 5).tolist()
        for name, fn in fns.items():
            ref = (fn(predicted.flatten(), labels.flatten(), num_classes=5, average="none") * 100).tolist()
            assert getattr(report, name) == pytest.approx(ref, abs=1e-4), name
