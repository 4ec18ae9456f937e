"""`metafsl predict` for real use (issue 28 §2), through the real CLI on a tiny ProtoNet run:
query folders, list files and globs; batches; top-k columns; the "unknown" answer (a given
threshold, or one calibrated by leave-one-out); unreadable files skipped by name; option checks."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY
from metafsl.cli import main

N_QUERY = 12  # 4 per class, over two folders


@pytest.fixture(scope="session")
def case(tmp_path_factory):
    """A tiny trained run; support/c<k>/ (3 classes x 2 glyphs); query/ a tree of 12 other glyphs
    of those classes (query/a/*.png, query/b/deep/*.png) and one notes.md."""
    from metafsl.data import glyphs

    root = tmp_path_factory.mktemp("scale")
    run = root / "run"
    assert main(["train", *TINY, "backbone.hidden=8", "trainer.iterations=2", "trainer.val_every=2",
                 "trainer.val_episodes=2", "algo.distance=cosine", "algo.temperature=50", "test=false",
                 f"hydra.run.dir={run}"]) == 0
    split = glyphs.generate(n_classes=20, examples_per_class=6, image_size=28, seed=7)["test"]
    for k in range(3):
        idx = torch.nonzero(split.labels == k).flatten().tolist()
        (root / "support" / f"c{k}").mkdir(parents=True)
        for j, i in enumerate(idx[:2]):
            Image.fromarray(split.images[i, 0].numpy()).save(root / "support" / f"c{k}" / f"{j}.png")
        for j, i in enumerate(idx[2:6]):
            folder = root / "query" / ("a" if j < 2 else "b/deep")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(split.images[i, 0].numpy()).save(folder / f"c{k}_{j}.png")
    (root / "query" / "notes.md").write_text("not an image, ignored by the folder walk")
    return run, root


def _predict(run_cli, case, *args, out: Path):
    run, root = case
    code, text, err = run_cli("predict", f"run={run}", f"support={root / 'support'}", *args, f"out={out}")
    assert code == 0, err
    with open(out) as f:
        return list(csv.DictReader(f)), " ".join(text.split())


def _probs(rows):
    """{resolved file: [p_c0, p_c1, p_c2]}"""
    return {Path(r["file"]).resolve(): [float(r[f"p_c{k}"]) for k in range(3)] for r in rows}


def _one_sentence(result) -> str:
    code, _, err = result
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_folder_list_and_glob_classify_the_same_images_whatever_the_batch_size(run_cli, case, tmp_path):
    run, root = case
    (root / "lists").mkdir(exist_ok=True)
    listed = sorted((root / "query").rglob("*.png"))
    (root / "lists" / "q.txt").write_text("# my shots\n\n" + "\n".join(f"../query/{p.relative_to(root / 'query')}"
                                                                    for p in listed) + "\n")
    folder, text = _predict(run_cli, case, f"query={root / 'query'}", "predict.batch_size=1", out=tmp_path / "one.csv")
    assert len(folder) == N_QUERY and all(r["error"] == "" for r in folder)
    assert "1 file without an image extension ignored" in text  # notes.md, counted
    reference = _probs(folder)
    ways = [(f"{root / 'query'}", 256), (f"{root / 'lists' / 'q.txt'}", 5), (f"{root / 'query'}/**/*.png", 256),
            (f"{root / 'query' / 'a'},{root / 'query' / 'b'}", 7)]
    for i, (query, size) in enumerate(ways):
        rows, _ = _predict(run_cli, case, f"query={query}", f"predict.batch_size={size}", out=tmp_path / f"{i}.csv")
        got = _probs(rows)
        assert got.keys() == reference.keys(), query
        for path, probs in got.items():
            assert probs == pytest.approx(reference[path], abs=1e-5), (query, size, path)
    # given twice (a folder and a file in it): classified once, and said
    rows, text = _predict(run_cli, case, f"query={root / 'query' / 'a'},{listed[0]}", out=tmp_path / "twice.csv")
    assert len(rows) == len(list((root / "query" / "a").glob("*.png"))) and "given twice" in text


def test_library_predict_is_silent_and_reports_progress_per_batch(case, capsys):
    from metafsl import api
    from metafsl.engine.callbacks import Callback

    class Record(Callback):
        def __init__(self):
            self.events = []

        def on_eval_start(self, description, episodes):
            self.events.append(("start", episodes))

        def on_eval_advance(self, episodes):
            self.events.append(("advance", episodes))

        def on_eval_end(self):
            self.events.append(("end",))

    run, root = case
    record = Record()
    capsys.readouterr()
    result = api.predict(run, root / "support", [root / "query"], batch_size=5, callbacks=[record])
    assert capsys.readouterr().out == ""
    assert record.events == [("start", N_QUERY), ("advance", 5), ("advance", 5), ("advance", 2), ("end",)]
    assert len(result.queries) == N_QUERY and result.probs.shape == (N_QUERY, 3) and not result.skipped


def test_top_k_columns_name_the_best_classes_in_order(run_cli, case, tmp_path):
    run, root = case
    rows, _ = _predict(run_cli, case, f"query={root / 'query'}", "predict.top_k=2", out=tmp_path / "k2.csv")
    assert "top2_probability" in rows[0] and "top3" not in rows[0]
    for r in rows:
        probs = {f"c{k}": float(r[f"p_c{k}"]) for k in range(3)}
        ranked = sorted(probs, key=probs.get, reverse=True)
        assert [r["top1"], r["top2"]] == ranked[:2]
        assert float(r["top1_probability"]) >= float(r["top2_probability"])
        assert float(r["top1_probability"]) == pytest.approx(probs[r["top1"]], abs=1e-6)
        assert float(r["top2_probability"]) == pytest.approx(probs[r["top2"]], abs=1e-6)
        assert r["predicted"] == r["top1"] and r["probability"] == r["top1_probability"]
    rows, _ = _predict(run_cli, case, f"query={root / 'query'}", out=tmp_path / "default.csv")
    assert "top3" in rows[0] and "top4" not in rows[0]  # default: min(3, classes)
    msg = _one_sentence(run_cli("predict", f"run={run}", f"support={root / 'support'}", f"query={root / 'query'}",
                                "predict.top_k=4"))
    assert "predict.top_k=4 is more than the 3 support classes" in msg


def test_reject_below_marks_exactly_the_images_under_the_threshold(run_cli, case, tmp_path):
    run, root = case
    rows, _ = _predict(run_cli, case, f"query={root / 'query'}", out=tmp_path / "all.csv")
    top = sorted(float(r["probability"]) for r in rows)
    middle = len(top) // 2
    assert top[middle] - top[middle - 1] > 1e-5, top  # a threshold between two images
    p = (top[middle] + top[middle - 1]) / 2
    rows, text = _predict(run_cli, case, f"query={root / 'query'}", f"predict.reject_below={p}",
                          out=tmp_path / "reject.csv")
    unknown = {r["file"] for r in rows if r["predicted"] == "unknown"}
    assert unknown == {r["file"] for r in rows if float(r["probability"]) < p}
    assert len(unknown) == middle
    assert f"{N_QUERY - middle} classified" in text and f"{middle} unknown (top probability below" in text
    assert all(r["predicted"] == r["top1"] for r in rows if r["file"] not in unknown)


def test_reject_auto_calibrates_on_the_support_set_and_says_so(run_cli, case, tmp_path):
    run, root = case
    rows, text = _predict(run_cli, case, f"query={root / 'query'}", "predict.reject=auto", out=tmp_path / "auto.csv")
    found = re.search(r"predict.reject=auto: unknown below threshold ([0-9.e-]+), chosen by leave-one-out on "
                      r"the 6 support images: the largest that keeps at least 95% of the", text)
    assert found, text
    t = float(found.group(1))
    assert 0 < t < 1
    clear = [r for r in rows if abs(float(r["probability"]) - t) > 1e-5]  # t is printed to 6 digits
    assert all((r["predicted"] == "unknown") == (float(r["probability"]) < t) for r in clear)
    single = tmp_path / "single"
    for k, n in ((0, 2), (1, 1), (2, 2)):
        (single / f"c{k}").mkdir(parents=True)
        for j in range(n):
            (single / f"c{k}" / f"{j}.png").write_bytes((root / "support" / f"c{k}" / f"{j}.png").read_bytes())
    msg = _one_sentence(run_cli("predict", f"run={run}", f"support={single}", f"query={root / 'query'}",
                                "predict.reject=auto", f"out={tmp_path / 'no.csv'}"))
    assert "predict.reject=auto needs at least 2 support images in every class" in msg and "'c1'" in msg
    assert not (tmp_path / "no.csv").exists()


def test_unreadable_query_files_are_named_and_skipped(run_cli, case, tmp_path):
    run, root = case
    query = tmp_path / "query"
    query.mkdir()
    good = sorted((root / "query" / "a").glob("*.png"))
    for p in good:
        (query / p.name).write_bytes(p.read_bytes())
    (query / "broken.png").write_bytes(b"not an image")
    (query / "cut.png").write_bytes(good[0].read_bytes()[:60])  # a truncated PNG
    (tmp_path / "list.txt").write_text("query/gone.png\n")
    rows, text = _predict(run_cli, case, f"query={query},{tmp_path / 'list.txt'}", out=tmp_path / "p.csv")
    skipped = {Path(r["file"]).name: r["error"] for r in rows if r["predicted"] == "skipped"}
    assert set(skipped) == {"broken.png", "cut.png", "gone.png"} and all(skipped.values())
    assert all(r["probability"] == "" for r in rows if r["predicted"] == "skipped")
    classified = [r for r in rows if r["predicted"] != "skipped"]
    assert sorted(Path(r["file"]).name for r in classified) == sorted(p.name for p in good)
    assert all(r["predicted"] in ("c0", "c1", "c2") for r in classified)
    assert f"{len(good) + 3} query files: {len(good)} classified" in text and "3 skipped (unreadable)" in text
    for name in ("broken.png: not an image file", "cut.png", "gone.png: does not exist (listed in list.txt)"):
        assert name in text
    # the support set must be trustworthy: an unreadable support image is an error
    bad = tmp_path / "support"
    for k in range(2):
        (bad / f"c{k}").mkdir(parents=True)
        (bad / f"c{k}" / "0.png").write_bytes(good[k].read_bytes())
    (bad / "c1" / "1.png").write_bytes(b"garbage")
    msg = _one_sentence(run_cli("predict", f"run={run}", f"support={bad}", f"query={query}"))
    assert "Cannot read" in msg and "1.png" in msg
    (bad / "c1" / "1.png").unlink()
    (bad / "c1").rename(bad / "unknown")  # a folder named like predict's own answers
    msg = _one_sentence(run_cli("predict", f"run={run}", f"support={bad}", f"query={query}"))
    assert "Support class folder 'unknown'" in msg and "rename the folder" in msg


@pytest.mark.parametrize("option, words", [
    ("predict.batch_size=0", "predict.batch_size must be an integer >= 1 (got 0)"),
    ("predict.batch_size=many", "predict.batch_size must be an integer >= 1 (got 'many')"),
    ("predict.top_k=0", "predict.top_k must be an integer >= 1"),
    ("predict.reject_below=1", "predict.reject_below must be a probability strictly between 0 and 1 (got 1.0)"),
    ("predict.reject_below=0", "strictly between 0 and 1"),
    ("predict.reject_below=high", "strictly between 0 and 1 (got 'high')"),
    ("predict.reject=maybe", "predict.reject must be auto (got 'maybe')"),
    ("predict.reject=auto predict.reject_below=0.5", "either predict.reject_below=<p> or predict.reject=auto"),
])
def test_bad_predict_options_are_one_sentence_before_any_work(run_cli, tmp_path, option, words):
    """Checked before the run dir is even looked at (it does not exist here)."""
    msg = _one_sentence(run_cli("predict", f"run={tmp_path / 'nowhere'}", f"support={tmp_path}",
                                f"query={tmp_path}", *option.split()))
    assert words in msg, msg
