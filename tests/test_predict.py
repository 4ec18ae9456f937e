"""`metafsl predict` on a fixture folder of glyph images (for every method), and ``adapt``."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from metafsl.cli import main
from metafsl.conf import group_options
from test_algorithms_cli import FAST


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """support/<class>/*.png (3 classes x 2) and query/*.png, from glyphs test classes."""
    from metafsl.data import glyphs

    ds = glyphs.generate(n_classes=20, examples_per_class=6, image_size=28, seed=7)
    split = ds["test"]
    root = tmp_path_factory.mktemp("images")
    truth = {}
    for k in range(3):
        idx = torch.nonzero(split.labels == k).flatten().tolist()
        (root / "support" / f"class{k}").mkdir(parents=True)
        (root / "query").mkdir(exist_ok=True)
        for j, i in enumerate(idx[:2]):
            Image.fromarray(split.images[i, 0].numpy()).save(root / "support" / f"class{k}" / f"{j}.png")
        Image.fromarray(split.images[idx[0], 0].numpy()).save(root / "query" / f"q{k}.png")
        truth[f"q{k}.png"] = f"class{k}"
    return root, truth


@pytest.fixture(scope="session")
def protonet_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "protonet"
    assert main(["train", *TINY, "backbone.hidden=16", "test=false", f"hydra.run.dir={run}"]) == 0
    return run


def _rows(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_predict_writes_class_and_probability(run_cli, protonet_run, images, tmp_path):
    root, truth = images
    out = tmp_path / "pred.csv"
    code, text, err = run_cli("predict", f"run={protonet_run}", f"support={root / 'support'}",
                              f"query={root / 'query'}", f"out={out}")
    assert code == 0, err
    rows = _rows(out)
    # each query is one of its class's two support images: the prediction must name that class
    assert {Path(r["file"]).name: r["predicted"] for r in rows} == truth
    for r in rows:
        probs = [float(r[f"p_class{k}"]) for k in range(3)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-3)
        assert float(r["probability"]) == pytest.approx(max(probs), abs=1e-4)
        assert float(r[f"p_{r['predicted']}"]) == pytest.approx(max(probs), abs=1e-6)
    assert "Predictions for 3 images" in text
    assert "Per class" not in text and not list(tmp_path.glob("*per_class*"))  # queries not in class folders


def test_predict_errors(run_cli, protonet_run, images, tmp_path):
    root, _ = images
    empty = tmp_path / "support_empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    Image.new("L", (28, 28)).save(empty / "a" / "x.png")
    code, _, err = run_cli("predict", f"run={protonet_run}", f"support={empty}", f"query={root / 'query'}")
    assert code == 2 and "Support class 'b'" in err and "has no images" in err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, _, err = run_cli("predict", f"run={protonet_run}", f"support={root / 'support'}", f"query={bad}")
    assert code == 2 and "Cannot read" in err and "bad.png" in err
    colour = tmp_path / "colour.png"
    arr = np.zeros((28, 28, 3), dtype=np.uint8)
    arr[..., 0] = 255
    Image.fromarray(arr).save(colour)
    code, _, err = run_cli("predict", f"run={protonet_run}", f"support={root / 'support'}", f"query={colour}")
    assert code == 2 and "colour image" in err and "convert=true" in err
    code, _, err = run_cli("predict", f"run={protonet_run}", f"support={root / 'support'}", f"query={colour}",
                           "convert=true", f"out={tmp_path / 'c.csv'}")
    assert code == 0, err
    code, _, err = run_cli("predict", f"run={protonet_run}")
    assert code == 2 and "needs run=" in err


def test_protonet_adapt_recovers_its_own_support():
    """1-shot support images used as queries sit exactly on their prototype."""
    from metafsl.algorithms.protonet import ProtoNet
    from metafsl.models import build_backbone

    torch.manual_seed(0)
    algo = ProtoNet(build_backbone("conv4", channels=1, image_size=28, hidden=8)).eval()
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([2, 0, 3, 1])  # unsorted labels: adapt must keep images and labels paired
    probs = algo.adapt(x, y)(x).softmax(-1)
    assert probs.shape == (4, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-5)
    assert probs.argmax(-1).tolist() == y.tolist()


def test_maml_adapt_takes_test_steps_and_checks_way():
    from metafsl.algorithms.maml import MAML
    from metafsl.errors import UserError
    from metafsl.models import build_backbone

    torch.manual_seed(0)
    algo = MAML(build_backbone("conv4", channels=1, image_size=28, hidden=8), n_way=3, inner_lr=0.5,
                test_inner_steps=20)
    x = torch.rand(3, 1, 28, 28)
    y = torch.arange(3)
    probs = algo.adapt(x, y)(x).softmax(-1)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    assert probs.argmax(-1).tolist() == [0, 1, 2]  # 20 steps fit 3 support images
    with pytest.raises(UserError, match="3-way output head"):
        algo.adapt(x[:2], y[:2])


# ----------------------------------------------------------------------------- every method
def _class_folders(root: Path, n_classes: int, per_class: int = 2) -> Path:
    """support/<class>/*.png with ``n_classes`` glyph classes, as a user would lay them out."""
    from metafsl.data import glyphs

    split = glyphs.generate(n_classes=40, examples_per_class=4, image_size=28, seed=11)["test"]
    support = root / f"support{n_classes}"
    for k in range(n_classes):
        (support / f"c{k}").mkdir(parents=True)
        for j, i in enumerate(torch.nonzero(split.labels == k).flatten()[:per_class].tolist()):
            Image.fromarray(split.images[i, 0].numpy()).save(support / f"c{k}" / f"{j}.png")
    return support


def _tiny_run(tmp_path_factory, name: str, n_way: int) -> Path:
    run = tmp_path_factory.mktemp("runs") / name
    code = main(["train", *TINY, f"algo={name}", "backbone.hidden=8", "trainer.iterations=2",
                 "trainer.val_every=2", "trainer.val_episodes=2", "test=false",
                 f"episode.train.n_way={n_way}", f"episode.test.n_way={n_way}", f"hydra.run.dir={run}",
                 *FAST.get(name, [])])
    assert code == 0, name
    return run


@pytest.mark.parametrize("name", group_options("algo"))
def test_predict_works_for_every_method(run_cli, tmp_path_factory, images, tmp_path, name):
    """A tiny 3-way run of every method predicts the fixture's 3 classes."""
    root, truth = images
    run = _tiny_run(tmp_path_factory, name, n_way=3)
    out = tmp_path / "pred.csv"
    code, text, err = run_cli("predict", f"run={run}", f"support={root / 'support'}",
                              f"query={root / 'query'}", f"out={out}")
    assert code == 0, err
    rows = _rows(out)
    assert sorted(Path(r["file"]).name for r in rows) == sorted(truth)
    for r in rows:
        probs = [float(r[f"p_class{k}"]) for k in range(3)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-3)
        assert float(r[f"p_{r['predicted']}"]) == pytest.approx(max(probs), abs=1e-6)


def test_predict_with_mann_says_how_many_classes_it_holds(run_cli, tmp_path_factory, images, tmp_path):
    """A 5-way MANN classifies 3 classes (3 probabilities each) and refuses 8 in one sentence."""
    root, _ = images
    run = _tiny_run(tmp_path_factory, "mann", n_way=5)
    code, _, err = run_cli("predict", f"run={run}", f"support={_class_folders(tmp_path, 8)}",
                           f"query={root / 'query'}", f"out={tmp_path / 'eight.csv'}")
    assert code == 2
    assert err.strip().endswith("MANN learner has 5 label slots: it classifies up to 5 classes, got 8.")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "eight.csv").exists()
    out = tmp_path / "three.csv"
    code, _, err = run_cli("predict", f"run={run}", f"support={_class_folders(tmp_path, 3)}",
                           f"query={root / 'query'}", f"out={out}")
    assert code == 0, err
    with open(out) as f:
        header, *rows = list(csv.reader(f))
    assert header == ["file", "predicted", "probability", "top1", "top1_probability", "top2", "top2_probability",
                      "top3", "top3_probability", "p_c0", "p_c1", "p_c2", "error"]
    assert rows and all(len(r) == len(header) for r in rows)
    assert all(sum(float(x) for x in r[9:12]) == pytest.approx(1.0, abs=1e-3) for r in rows)


def test_testing_a_fixed_head_on_more_classes_names_the_head(run_cli, tmp_path_factory, tmp_path):
    """`metafsl test` of a 3-way MAML run on 20-way episodes: the head's size, in one sentence."""
    run = _tiny_run(tmp_path_factory, "maml", n_way=3)
    code, out, err = run_cli("test", f"run={run}", "episode=20w1s", "eval.episodes=2", "dataset.n_classes=120",
                             f"hydra.run.dir={tmp_path / 'test'}")
    assert code == 2
    assert "This MAML learner has a 3-way output head: it classifies exactly 3 classes, got 20" in err
    assert "another version" not in err + out and "Traceback" not in err


def test_transductive_predict_and_test_are_marked(run_cli, protonet_run, images, tmp_path):
    """predict.transductive classifies the query folder together (and says so); a transductive
    `metafsl test` is recorded and listed as such, never as an inductive result."""
    import json

    root, truth = images
    out = tmp_path / "pred.csv"
    code, text, err = run_cli("predict", f"run={protonet_run}", f"support={root / 'support'}",
                              f"query={root / 'query'}", f"out={out}", "predict.transductive=ptmap")
    assert code == 0, err
    assert {Path(r["file"]).name: r["predicted"] for r in _rows(out)} == truth
    assert "Transductive (ptmap): all 3 query images were classified together" in " ".join(text.split())
    code, text, err = run_cli("test", f"run={protonet_run}", "eval=bdcspn", "eval.episodes=2",
                              f"out={tmp_path / 'rec'}")
    assert code == 0, err
    record = json.loads((tmp_path / "rec" / "result.json").read_text())
    assert (record["inference"], record["transductive"], record["query_batch"]) == ("transductive", "bdcspn", 25)
    assert run_cli("test", f"run={protonet_run}", "eval.episodes=2", f"out={tmp_path / 'ind'}")[0] == 0
    code, text, err = run_cli("results", str(protonet_run), "format=csv")
    assert code == 0, err
    inference = [row["inference"] for row in csv.DictReader(text.splitlines())]
    assert "transductive bdcspn (25 queries at once)" in inference and "inductive" in inference


def test_transductive_refused_for_a_non_metric_learner(run_cli, protonet_run, images, tmp_path):
    from metafsl.engine.evaluate import check_transductive
    from metafsl.errors import UserError

    with pytest.raises(UserError, match="needs a metric learner's embeddings .* not maml"):
        check_transductive({"algo": {"_target_": "metafsl.algorithms.maml.MAML", "name": "maml"},
                            "eval": {"transductive": "tim"}})
    check_transductive({"algo": {"_target_": "metafsl.algorithms.maml.MAML"}, "eval": {"transductive": "none"}})
    root, _ = images
    code, _, err = run_cli("predict", f"run={protonet_run}", f"support={root / 'support'}",
                           f"query={root / 'query'}", "predict.transductive=tim", "predict.reject=auto")
    assert code == 2 and "predict.reject=auto" in err


def test_bench_transductive_smoke(protonet_run, tmp_path):
    """scripts/bench_transductive.py on a tiny run: a table row per rule and shot, a shot the
    data cannot give listed as skipped."""
    import json

    from conftest import load_script

    bench = load_script("bench_transductive")
    assert bench.main([str(protonet_run), str(tmp_path / "ev"), "--smoke", "--shots", "1,50",
                       "--methods", "none,bdcspn"]) == 0
    rows = json.loads((tmp_path / "ev" / "transductive.json").read_text())["rows"]
    assert [(r["shot"], r["method"]) for r in rows] == [(1, "none"), (1, "bdcspn"), (50, "none"), (50, "bdcspn")]
    assert rows[1]["inference"].startswith("transductive bdcspn") and "skipped" in rows[2]
    assert "| 1 | transductive bdcspn (25 queries at once) |" in (tmp_path / "ev" / "transductive.md").read_text()


def test_predict_with_tta_averages_the_views(run_cli, protonet_run, images, tmp_path):
    """eval.tta=1 is the plain path; eval.tta=3 changes the probabilities (each embedding is the
    mean over three views) and still names the queries, each a copy of a support image; through
    the CLI it writes its CSV, also with a transductive rule."""
    from metafsl import api

    root, truth = images
    ask = (protonet_run, root / "support", root / "query")
    plain = api.predict(*ask)
    assert torch.equal(api.predict(*ask, tta=1).probs, plain.probs)
    views = api.predict(*ask, tta=3)
    assert views.queries == plain.queries and not torch.allclose(views.probs, plain.probs, rtol=0, atol=1e-9)
    assert {q.name: views.names[k] for q, k in zip(views.queries, views.probs.argmax(-1).tolist())} == truth
    for extra in ([], ["predict.transductive=ptmap"]):
        code, _, err = run_cli("predict", f"run={protonet_run}", f"support={ask[1]}", f"query={ask[2]}",
                               f"out={tmp_path / 'p.csv'}", "overwrite=true", "eval.tta=3", *extra)
        assert code == 0, err
        assert sorted(Path(r["file"]).name for r in _rows(tmp_path / "p.csv")) == sorted(truth)


def test_predict_with_tta_fits_a_transfer_baselines_head_once(tmp_path_factory, images):
    """A transfer baseline's head is fitted once on the averaged support embeddings: the
    probabilities do not depend on how many queries are classified at once; and its random head
    initialisation is seeded, so a second call gives the same answers (with and without TTA)."""
    from metafsl import api

    root, _ = images
    run = _tiny_run(tmp_path_factory, "baselinepp", n_way=3)
    one = api.predict(run, root / "support", root / "query", tta=3, batch_size=1).probs
    assert torch.allclose(api.predict(run, root / "support", root / "query", tta=3, batch_size=3).probs, one, atol=1e-6)
    plain = api.predict(run, root / "support", root / "query").probs
    torch.rand(7)  # whatever ran before
    assert torch.equal(api.predict(run, root / "support", root / "query").probs, plain)


def test_predict_tta_refusals(run_cli, tmp_path_factory, protonet_run, images, tmp_path):
    root, _ = images
    ask = ["predict", f"support={root / 'support'}", f"query={root / 'query'}", f"out={tmp_path / 'p.csv'}"]
    maml = _tiny_run(tmp_path_factory, "maml", n_way=3)
    for run, extra, says in ((maml, "eval.tta=3", "eval.tta=3 averages the image embeddings"),
                             (protonet_run, "eval.tta=11", "eval.tta must be an integer from 1 to 10"),
                             (protonet_run, "eval.tta=x", "eval.tta must be an integer from 1 to 10 (got 'x')"),
                             (protonet_run, "predict.reject=auto", "with eval.tta=3 give predict.reject_below")):
        code, out, err = run_cli(*ask, f"run={run}", extra, *(["eval.tta=3"] if "reject" in extra else []))
        assert code == 2 and says in err and "Traceback" not in err, err + out
        assert not (tmp_path / "p.csv").exists()
