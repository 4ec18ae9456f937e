"""dataset=folder: the user's own images in class folders or train/val/test folders (or a zip)."""
from __future__ import annotations

import pytest

import data_fixtures as fx
from conftest import split_table
from metafsl.data import folder
from metafsl.errors import UserError


def test_class_folders_split_by_seeded_fractions(tmp_path):
    root = fx.class_folders(tmp_path / "imgs", n_classes=10, per_class=3)
    ds = folder.load(root, image_size=8, channels=3, train_fraction=0.6, val_fraction=0.2, seed=0,
                     cache_dir=str(tmp_path / "c"))
    assert {k: s.n_classes for k, s in ds.splits.items()} == {"train": 6, "val": 2, "test": 2}
    names = [set(s.class_names) for s in ds.splits.values()]
    assert set.union(*names) == {f"class{c:02d}" for c in range(10)} and sum(map(len, names)) == 10
    assert ds.skipped == [f"{root}/class00/broken.png"]
    assert ds["train"].images.shape[1:] == (3, 8, 8)
    again = folder.load(root, 8, 3, 0.6, 0.2, 0, cache_dir=str(tmp_path / "c2"))
    assert again["test"].class_names == ds["test"].class_names  # same seed, same split
    other = folder.load(root, 8, 3, 0.6, 0.2, 1, cache_dir=str(tmp_path / "c3"))
    assert [s.class_names for s in other.splits.values()] != [s.class_names for s in ds.splits.values()]


def test_given_splits_and_grayscale(tmp_path):
    root = fx.split_folders(tmp_path / "imgs", {"train": 4, "val": 2, "test": 3}, per_class=2)
    ds = folder.load(root, image_size=10, channels=1, cache_dir=str(tmp_path / "c"))
    assert {k: s.n_classes for k, s in ds.splits.items()} == {"train": 4, "val": 2, "test": 3}
    assert ds["test"].class_names == ["test0", "test1", "test2"]
    assert ds["train"].images.shape == (8, 1, 10, 10) and len(ds.mean) == 1


def test_given_splits_without_val(tmp_path):
    root = fx.split_folders(tmp_path / "imgs", {"train": 3, "test": 2}, per_class=2)
    ds = folder.load(root, image_size=8, cache_dir=str(tmp_path / "c"))
    assert sorted(ds.splits) == ["test", "train"]


def test_zip_of_a_folder(tmp_path):
    src = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, mode="L")
    z = fx.zip_folder(src, tmp_path / "mine.zip", top="mine")
    ds = folder.load(z, image_size=8, channels=3, cache_dir=str(tmp_path / "c"))
    assert sum(s.n_classes for s in ds.splits.values()) == 5
    assert ds.skipped == [f"{z}/mine/class00/broken.png"]


def test_cache_sees_new_files(tmp_path):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)
    n1 = sum(s.images.shape[0] for s in folder.load(root, 8, cache_dir=str(tmp_path / "c")).splits.values())
    fx.write(root / "class01" / "extra.png", fx.png(999))
    n2 = sum(s.images.shape[0] for s in folder.load(root, 8, cache_dir=str(tmp_path / "c")).splits.values())
    assert (n1, n2) == (10, 11)


def test_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        folder.load(tmp_path / "missing", cache_dir=str(tmp_path / "c"))
    (tmp_path / "flat").mkdir()
    fx.write(tmp_path / "flat" / "a.png", fx.png(1))
    with pytest.raises(UserError, match="No images in class folders"):
        folder.load(tmp_path / "flat", cache_dir=str(tmp_path / "c"))
    root = fx.class_folders(tmp_path / "two", n_classes=1, per_class=2, corrupt=False)
    with pytest.raises(UserError, match="each split needs at least one class"):
        folder.load(root, cache_dir=str(tmp_path / "c"))
    root = fx.class_folders(tmp_path / "ok", n_classes=4, per_class=2, corrupt=False)
    with pytest.raises(UserError, match="dataset.channels must be 1"):
        folder.load(root, channels=4, cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="leave no test classes"):
        folder.load(root, train_fraction=0.9, val_fraction=0.2, cache_dir=str(tmp_path / "c"))


def test_data_command(tmp_path, run_cli):
    root = fx.class_folders(tmp_path / "imgs", n_classes=10, per_class=3)
    code, out, err = run_cli("data", "dataset=folder", f"dataset.root={root}", "dataset.image_size=12",
                             "dataset.channels=1")
    assert code == 0, err
    assert "1x12x12" in out and "1 unreadable file(s) skipped" in out
    assert f"{root}/class00/broken.png" in fx.flat(out)


def test_class_folders_too_few_for_the_fractions_are_one_sentence_before_decoding(tmp_path, run_cli):
    root = fx.class_folders(tmp_path / "imgs", n_classes=3, per_class=2)
    args = ("data", "dataset=folder", f"dataset.root={root}", "dataset.image_size=8")
    code, out, err = run_cli(*args)
    assert code == 2 and "Traceback" not in err
    assert fx.flat(err) == fx.flat(
        f"error: The 3 class folder(s) in {root} give 2 train, 1 val and 0 test classes with "
        "dataset.train_fraction=0.6 and dataset.val_fraction=0.2, but each split needs at least one class; "
        "add class folders (the fewest that works with these fractions is 4) or change the fractions.")
    assert not (root / ".metafsl-cache").exists()  # refused before any image was decoded
    code, out, err = run_cli(*args, "dataset.val_fraction=0")
    assert code == 0, err
    assert sorted(split_table(out)) == ["test", "train"]
