"""Split definitions are refused when an image is listed twice or a class is in two splits
(leakage between training and test), in every split-file format: the miniImageNet CSV release
and pickles, tieredImageNet labels, Lake runs' class_labels.txt and the packaged split files."""
from __future__ import annotations

import json
import pickle
import zipfile

import pytest

import data_fixtures as fx
from metafsl.data import cifar, cub, lake_runs, mini_imagenet, omniglot, tiered_imagenet
from metafsl.data.checks import check_split_spec
from metafsl.errors import UserError

SPLITS = {"train": 3, "val": 2, "test": 2}


def _append(path, line):
    path.write_text(path.read_text() + line + "\n")


def test_duplicate_csv_row_names_the_file_and_lines(tmp_path):
    root = fx.mini_csv(tmp_path / "mini", SPLITS, per_class=2, corrupt=False)
    _append(root / "train.csv", "ntrain0001_0.JPEG,ntrain0001")
    with pytest.raises(UserError, match=rf"Line 8 of {root / 'train.csv'} repeats ntrain0001_0.JPEG \(first on line 4\)"):
        mini_imagenet.load(root, image_size=8, cache_dir=str(tmp_path / "c"))


def test_image_in_two_csv_files_is_refused(tmp_path):
    root = fx.mini_csv(tmp_path / "mini", SPLITS, per_class=2, corrupt=False)
    _append(root / "test.csv", "ntrain0000_1.JPEG,ntest0000")
    with pytest.raises(UserError, match=rf"ntrain0000_1.JPEG is listed in both {root / 'train.csv'} and {root / 'test.csv'}"):
        mini_imagenet.load(root, image_size=8, cache_dir=str(tmp_path / "c"))


def test_class_in_two_csv_files_is_leakage(tmp_path, run_cli):
    root = fx.mini_csv(tmp_path / "mini", SPLITS, per_class=2, corrupt=False)
    fx.write(root / "images" / "extra.JPEG", fx.png(1, fmt="JPEG"))
    _append(root / "val.csv", "extra.JPEG,ntrain0002")
    with pytest.raises(UserError, match=rf"Class 'ntrain0002' is in {root / 'train.csv'} and {root / 'val.csv'}; "
                                        "a class must belong to one split only"):
        mini_imagenet.load(root, image_size=8, cache_dir=str(tmp_path / "c"))
    code, out, err = run_cli("data", "dataset=mini_imagenet", f"dataset.root={root}", "dataset.image_size=8")
    assert code == 2 and "Traceback" not in err
    assert "Class 'ntrain0002' is in" in err and len(err.strip().splitlines()) <= 3  # one sentence, wrapped


def test_pickle_class_in_two_splits_and_index_in_two_classes(tmp_path):
    root = fx.mini_pickles(tmp_path / "mini", SPLITS, per_class=2)
    path = root / "mini-imagenet-cache-test.pkl"
    data = pickle.loads(path.read_bytes())
    data["class_dict"]["ntrain0000"] = data["class_dict"].pop("ntest0000")
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(UserError, match=r"Class 'ntrain0000' is in .*cache-train.pkl and .*cache-test.pkl"):
        mini_imagenet.load(root, image_size=8, cache_dir=str(tmp_path / "c"))
    root = fx.mini_pickles(tmp_path / "mini2", SPLITS, per_class=2)
    path = root / "mini-imagenet-cache-val.pkl".replace("val", "validation")
    data = pickle.loads(path.read_bytes())
    data["class_dict"]["nval0001"] = data["class_dict"]["nval0001"] + [0]  # image 0 is nval0000's
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(UserError, match=r"Image index 0 is listed in both class nval0000 .* and class nval0001"):
        mini_imagenet.load(root, image_size=8, cache_dir=str(tmp_path / "c"))


def test_tiered_class_in_two_splits(tmp_path):
    root = fx.tiered_pickles(tmp_path / "t", SPLITS, per_class=2, corrupt=False)
    path = root / "tiered-imagenet" / "test_labels.pkl"
    labels = pickle.loads(path.read_bytes())
    labels["label_specific_str"][5] = "class0"  # a test class named like a training class
    path.write_bytes(pickle.dumps(labels))
    with pytest.raises(UserError, match=r"Class 'class0' is in .*train_labels.pkl and .*test_labels.pkl"):
        tiered_imagenet.load(root, image_size=8, cache_dir=str(tmp_path / "c"))


def test_tiered_ids_restarting_per_split_without_names_are_not_leakage(tmp_path):
    root = fx.tiered_pickles(tmp_path / "t", SPLITS, per_class=2, corrupt=False)
    for split, first in (("train", 0), ("val", 3), ("test", 5)):
        path = root / "tiered-imagenet" / f"{split}_labels.pkl"
        labels = pickle.loads(path.read_bytes())
        labels["label_specific"] = labels["label_specific"] - first
        del labels["label_specific_str"]
        path.write_bytes(pickle.dumps(labels))
    ds = tiered_imagenet.load(root, image_size=8, cache_dir=str(tmp_path / "c"))
    assert ds["val"].class_names == ["val-class000", "val-class001"]


def test_lake_run_listing_a_test_item_twice(tmp_path):
    z = fx.lake_runs(tmp_path / "all_runs.zip", n_runs=1)
    with zipfile.ZipFile(z) as src:
        files = {n: src.read(n) for n in src.namelist()}
    lines = files["run01/class_labels.txt"].decode().splitlines()
    files["run01/class_labels.txt"] = ("\n".join(lines + [lines[0]]) + "\n").encode()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as out:
        for n, data in files.items():
            out.writestr(n, data)
    with pytest.raises(UserError, match=r"Test item run01/test/item01.png is listed twice in .*class_labels.txt"):
        lake_runs.read_runs(bad, image_size=28)


def test_packaged_split_files_list_each_class_once():
    for path in (cub.SPLIT_FILE, cifar.SPLIT_DIR / "cifarfs.json", cifar.SPLIT_DIR / "fc100.json"):
        check_split_spec(json.loads(path.read_text()), path)
    with pytest.raises(UserError, match=r"Class b is listed in both the train list of x.json and the test list"):
        check_split_spec({"train": ["a", "b"], "val": ["c"], "test": ["b"]}, "x.json")
    with pytest.raises(UserError, match=r"Class a is listed twice in the val list of x.json"):
        check_split_spec({"train": ["b"], "val": ["a", "a"], "test": ["c"]}, "x.json")


def test_omniglot_split_file_lists_each_character_once(tmp_path):
    assert len(omniglot.vinyals_split()) == 1028 + 172 + 423
    bad = fx.write(tmp_path / "split.txt", b"train\tGreek\t1-3\ntest\tGreek\t3\n")
    with pytest.raises(UserError, match=r"lists Greek/character03 twice \(train and test\)"):
        omniglot.vinyals_split(bad)
