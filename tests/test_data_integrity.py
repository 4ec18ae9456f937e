"""Nothing lost, nothing silent in dataset=folder: symbolic-link class folders, the split layout
recognised by its names, ambiguous layouts and leakage refused, and the data report (skipped
files, entries not used, classes too small for an episode) through the loader and `train`."""
from __future__ import annotations

import json
import os
import re

import pytest

import data_fixtures as fx
from conftest import TINY_DATA
from metafsl.data import folder
from metafsl.data.report import DataReport, episode_need
from metafsl.errors import UserError


def _load(root, tmp_path, **kw):
    return folder.load(root, image_size=8, channels=1, cache_dir=str(tmp_path / "c"), **kw)


def _classes(ds):
    return sorted(c for s in ds.splits.values() for c in s.class_names)


def test_symlinked_class_folders_are_followed(tmp_path):
    root = fx.linked_class_folders(tmp_path / "imgs", tmp_path / "store", n_linked=3, n_plain=3)
    ds = _load(root, tmp_path)
    assert _classes(ds) == ["link00", "link01", "link02", "plain00", "plain01", "plain02"]
    assert sum(len(s.labels) for s in ds.splits.values()) == 18 and not ds.ignored


def test_symlink_loop_is_not_followed_and_is_reported(tmp_path):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)
    (root / "class00" / "again").symlink_to(root, target_is_directory=True)  # loop
    (root / "class01" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # broken link
    ds = _load(root, tmp_path)
    assert _classes(ds) == [f"class{c:02d}" for c in range(5)]
    assert sum(len(s.labels) for s in ds.splits.values()) == 10
    assert ds.ignored == [f"{root}/class00/again/ (symbolic link loop, not followed)",
                          f"{root}/class01/gone.png (broken symbolic link)"]
    assert "symbolic link loop" in ds.report().line()


def test_split_layout_recognised_by_its_names(tmp_path):
    root = fx.split_folders(tmp_path / "imgs", {"Train": 3, "val": 2, "TEST": 2}, per_class=2)
    ds = _load(root, tmp_path)
    assert {k: s.n_classes for k, s in ds.splits.items()} == {"train": 3, "val": 2, "test": 2}


def test_split_layout_without_test_is_refused(tmp_path):
    root = fx.split_folders(tmp_path / "imgs", {"train": 3, "val": 2}, per_class=2)
    with pytest.raises(UserError, match=r"has train/ and val/ but no test/ with class folders"):
        _load(root, tmp_path)
    root = fx.split_folders(tmp_path / "only-test", {"test": 3}, per_class=2)
    with pytest.raises(UserError, match=r"has test/ but no train/"):
        _load(root, tmp_path)


def test_ambiguous_layout_is_refused_with_both_layouts(tmp_path):
    root = fx.split_folders(tmp_path / "imgs", {"train": 3, "test": 2}, per_class=2)
    fx.write(root / "cats" / "0.png", fx.png(1))
    with pytest.raises(UserError) as info:
        _load(root, tmp_path)
    msg = str(info.value)
    assert "mixes split folders (test, train) with class folders (cats)" in msg
    assert "<root>/<class>/<image> or <root>/<split>/<class>/<image>" in msg and msg.count(".") >= 1


def test_class_in_two_split_folders_is_refused(tmp_path):
    root = fx.split_folders(tmp_path / "imgs", {"train": 3, "test": 2}, per_class=2)
    fx.write(root / "test" / "train1" / "x.jpg", fx.png(3, fmt="JPEG"))
    with pytest.raises(UserError, match=rf"Class 'train1' is in {root}/train/ and {root}/test/; a class must belong"):
        _load(root, tmp_path)


def test_one_image_linked_into_two_splits_is_refused(tmp_path):
    root = fx.split_folders(tmp_path / "imgs", {"train": 3, "test": 2}, per_class=2)
    (root / "test" / "alias").symlink_to(root / "train" / "train0", target_is_directory=True)
    with pytest.raises(UserError, match=r"is in both .*train/train0/ and .*test/alias/"):
        _load(root, tmp_path)


def test_stray_images_are_reported_not_silently_dropped(tmp_path):
    root = fx.split_folders(tmp_path / "imgs", {"train": 3, "test": 2}, per_class=2)
    fx.write(root / "train" / "loose.png", fx.png(9))
    ds = _load(root, tmp_path)
    assert ds.ignored == [f"{root}/train/loose.png (not in a class folder)"]


def test_report_counts_skipped_files_and_too_small_classes(tmp_path):
    root = fx.folder_report_case(tmp_path / "imgs")
    ds = _load(root, tmp_path)
    need = episode_need({"train": {"n_shot": 1, "n_query": 1}, "test": {"n_shot": 2, "n_query": 1}})
    assert need == {"train": 2, "val": 3, "test": 3}
    report = ds.report(need)
    assert report and report.skipped == [f"{root}/train/train0/broken.jpg"]
    assert report.dropped == {"train": [("lonely", 1)]}
    line = report.line()
    assert line.count("\n") == 0 and "1 unreadable file skipped" in line
    assert "1 class dropped for having fewer images than an episode needs (train: lonely has 1 of 2)" in line
    assert report.to_dict()["dropped"] == {"train": [{"class": "lonely", "images": 1}]}
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()
    assert not DataReport() and "every file was read" in DataReport().line()


def test_report_names_a_few_and_counts_the_rest():
    report = DataReport(skipped=[f"f{i}.png" for i in range(5)])
    assert report.line() == "Data: 5 unreadable files skipped (f0.png, f1.png, f2.png and 2 more)."


def test_train_prints_the_report_line_and_keeps_it_in_the_summary(tmp_path, run_cli):
    root = fx.folder_report_case(tmp_path / "imgs")
    run = tmp_path / "run"
    episode = [f"episode.{p}.{k}={v}" for p in ("train", "test") for k, v in
               (("n_way", 2), ("n_shot", 1), ("n_query", 1))]
    code, out, err = run_cli("train", f"hydra.run.dir={run}", "dataset=folder", f"dataset.root={root}",
                             "dataset.image_size=16", "dataset.channels=1", *episode, "trainer=fast",
                             "trainer.iterations=2", "trainer.val_every=2", "trainer.val_episodes=2",
                             "eval.episodes=2")
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("Data:")]
    assert len(lines) == 1, out
    text = fx.flat(out)
    assert fx.flat(f"{root}/train/train0/broken.jpg") in text and "(train:lonelyhas1of2)" in text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["skipped"] == [f"{root}/train/train0/broken.jpg"]
    assert summary["data"]["dropped"] == {"train": [{"class": "lonely", "images": 1}]}


def test_train_on_clean_data_prints_no_data_line(tmp_path, run_cli):
    run = tmp_path / "run"
    code, out, err = run_cli("train", f"hydra.run.dir={run}", *TINY_DATA, "trainer=fast", "trainer.iterations=1",
                             "trainer.val_every=1", "trainer.val_episodes=1", "eval.episodes=1")
    assert code == 0, err
    assert "Data:" not in out
    assert json.loads((run / "summary.json").read_text())["data"]["skipped"] == []


def test_data_command_lists_entries_not_used(tmp_path, run_cli):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)
    os.symlink(root, root / "class00" / "loop", target_is_directory=True)
    code, out, err = run_cli("data", "dataset=folder", f"dataset.root={root}", "dataset.image_size=8",
                             "dataset.channels=1")
    assert code == 0, err
    assert "notused:" in fx.flat(out) and "symboliclinkloop" in fx.flat(out)


def test_data_command_names_classes_too_small_for_the_episode(tmp_path, run_cli):
    root = fx.folder_report_case(tmp_path / "imgs")
    base = ("data", "dataset=folder", f"dataset.root={root}", "dataset.image_size=8", "dataset.channels=1")
    small = [f"episode.{p}.{k}=1" for p in ("train", "test") for k in ("n_shot", "n_query")]
    code, out, err = run_cli(*base, *small)
    assert code == 0, err
    assert "1 class dropped for having fewer images than an episode needs (train: lonely has 1 of 2)." in out
    code, out, err = run_cli(*base, "episode=5w1s")  # 16 images per class: every class is too small
    assert code == 0 and "8 classes dropped" in out


def test_layout_sentences_through_the_cli(tmp_path, run_cli):
    def data(root):
        code, _out, err = run_cli("data", "dataset=folder", f"dataset.root={root}", "dataset.image_size=8")
        assert code == 2 and "Traceback" not in err and err.startswith("error:")
        return " ".join(err.split())

    no_test = fx.split_folders(tmp_path / "no-test", {"train": 3, "val": 2}, per_class=2)
    assert f"{no_test} has train/ and val/ but no test/ with class folders of images;" in data(no_test)
    mixed = fx.split_folders(tmp_path / "mixed", {"train": 3, "test": 2}, per_class=2)
    fx.write(mixed / "dogs" / "0.png", fx.png(2))
    assert ("mixes split folders (test, train) with class folders (dogs), so its layout is ambiguous; use either "
            "<root>/<class>/<image> or <root>/<split>/<class>/<image> with split train, val or test.") in data(mixed)


def test_symlinked_classes_counted_by_the_data_command(tmp_path, run_cli):
    root = fx.linked_class_folders(tmp_path / "imgs", tmp_path / "store", n_linked=4, n_plain=1)
    code, out, err = run_cli("data", "dataset=folder", f"dataset.root={root}", "dataset.image_size=8",
                             "dataset.train_fraction=0.6", "dataset.val_fraction=0.2")
    assert code == 0, err
    assert sum(int(n) for n in re.findall(r"(?:train|val|test)\s*│\s*(\d+)", out)) == 5
