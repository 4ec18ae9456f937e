"""miniImageNet (CSV release and learn2learn pickles) and tieredImageNet (learn2learn pickles)
loaders, against small fixtures in their real on-disk formats."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import data_fixtures as fx
from metafsl.data import load_dataset, mini_imagenet, tiered_imagenet
from metafsl.errors import UserError

SPLITS = {"train": 3, "val": 2, "test": 2}


def test_csv_release_counts_and_corrupt_file(tmp_path):
    root = fx.mini_csv(tmp_path / "mini", SPLITS, per_class=4)
    ds = mini_imagenet.load(root, image_size=16, cache_dir=str(tmp_path / "c"))
    assert {k: s.n_classes for k, s in ds.splits.items()} == SPLITS
    assert ds["train"].images.shape == (12, 3, 16, 16) and ds["train"].images.dtype == torch.uint8
    assert ds["train"].counts().tolist() == [4, 4, 4]  # the corrupt 5th image of class 0 is skipped
    assert ds.skipped == [f"{root / 'images'}/broken.JPEG"]
    assert len(ds.mean) == 3 and all(0 < m < 1 for m in ds.mean)


def test_csv_images_match_the_files(tmp_path):
    root = fx.mini_csv(tmp_path / "mini", {"train": 1, "val": 1, "test": 1}, per_class=1, corrupt=False)
    ds = mini_imagenet.load(root, image_size=12, cache_dir=str(tmp_path / "c"))
    from PIL import Image
    expected = np.array(Image.open(root / "images" / "ntrain0000_0.JPEG").convert("RGB"))
    assert torch.equal(ds["train"].images[0], torch.from_numpy(expected).permute(2, 0, 1))


def test_csv_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = fx.mini_csv(tmp_path / "mini", SPLITS, per_class=2, corrupt=False)
    mini_imagenet.load(root, image_size=8, cache_dir=str(tmp_path / "c"))
    calls = []
    monkeypatch.setattr(mini_imagenet, "load_csv", lambda *a: calls.append(a))
    mini_imagenet.load(root, image_size=8, cache_dir=str(tmp_path / "c"))  # from the cache
    assert calls == []
    assert list((root / ".metafsl-cache").glob("mini_imagenet-*.pt"))


def test_pickles_classes_from_class_dict(tmp_path):
    root = fx.mini_pickles(tmp_path / "mini", SPLITS, per_class=5, size=10)
    ds = mini_imagenet.load(root, image_size=10, cache_dir=str(tmp_path / "c"))
    assert {k: s.n_classes for k, s in ds.splits.items()} == SPLITS
    raw = pickle.loads((root / "mini-imagenet-cache-train.pkl").read_bytes())
    # class 1's images are rows 1, 4, 7, ... of image_data
    idx = raw["class_dict"]["ntrain0001"]
    got = ds["train"].images[ds["train"].labels == 1]
    assert torch.equal(got, torch.from_numpy(raw["image_data"][idx]).permute(0, 3, 1, 2))


def test_pickles_resize_and_grayscale(tmp_path):
    root = fx.mini_pickles(tmp_path / "mini", SPLITS, per_class=2, size=10)
    ds = mini_imagenet.load(root, image_size=6, channels=1, cache_dir=str(tmp_path / "c"))
    assert ds["val"].images.shape == (4, 1, 6, 6)


def test_auto_format_prefers_csv_and_format_pickle_overrides(tmp_path):
    root = fx.mini_csv(tmp_path / "mini", SPLITS, per_class=2, corrupt=False)
    fx.mini_pickles(root, SPLITS, per_class=3)
    assert mini_imagenet.load(root, 8, cache_dir=str(tmp_path / "c"))["train"].images.shape[0] == 6
    assert mini_imagenet.load(root, 8, format="pickle", cache_dir=str(tmp_path / "c"))["train"].images.shape[0] == 9


def test_missing_files_name_the_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="train.csv, val.csv, test.csv"):
        mini_imagenet.load(tmp_path / "empty", cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="does not exist"):
        mini_imagenet.load(tmp_path / "nowhere", cache_dir=str(tmp_path / "c"))
    root = fx.mini_csv(tmp_path / "mini", SPLITS, per_class=1, corrupt=False)
    (root / "val.csv").unlink()
    with pytest.raises(UserError, match=f"{root / 'val.csv'} does not exist"):
        mini_imagenet.load(root, cache_dir=str(tmp_path / "c"))
    pk = fx.mini_pickles(tmp_path / "pk", SPLITS, per_class=1)
    (pk / "mini-imagenet-cache-test.pkl").unlink()
    with pytest.raises(UserError, match="Missing mini-imagenet-cache-test.pkl"):
        mini_imagenet.load(pk, format="pickle", cache_dir=str(tmp_path / "c"))


def test_bad_pickle_and_bad_format(tmp_path):
    root = fx.mini_pickles(tmp_path / "mini", SPLITS, per_class=1)
    (root / "mini-imagenet-cache-val.pkl").write_bytes(b"junk")
    (root / "mini-imagenet-cache-validation.pkl").write_bytes(b"junk")
    with pytest.raises(UserError, match="mini-imagenet-cache-validation.pkl"):
        mini_imagenet.load(root, cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="dataset.format"):
        mini_imagenet.load(root, format="hdf5", cache_dir=str(tmp_path / "c"))


def test_pickles_refuse_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    root = fx.mini_pickles(tmp_path / "mini", SPLITS, per_class=1)
    (root / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps({"image_data": Evil(), "class_dict": {}}))
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        mini_imagenet.load(root, cache_dir=str(tmp_path / "c"))


def test_tiered_pickles(tmp_path):
    root = fx.tiered_pickles(tmp_path / "tiered", SPLITS, per_class=3)
    ds = tiered_imagenet.load(root, image_size=12, cache_dir=str(tmp_path / "c"))
    assert {k: s.n_classes for k, s in ds.splits.items()} == SPLITS
    assert ds["train"].counts().tolist() == [3, 3, 3]
    assert ds["val"].class_names == ["class3", "class4"]  # global ids renumbered per split
    assert ds["train"].groups.tolist() == [0, 1, 0] and ds["train"].group_names == ["catA", "catB"]
    assert ds.skipped == [f"{root / 'tiered-imagenet' / 'train_images_png.pkl'}[9]"]
    # the folder itself is also accepted as root
    assert tiered_imagenet.load(root / "tiered-imagenet", 12, cache_dir=str(tmp_path / "c"))["test"].n_classes == 2


def test_tiered_missing_files(tmp_path):
    with pytest.raises(UserError, match="train_images_png.pkl"):
        tiered_imagenet.load(tmp_path, cache_dir=str(tmp_path / "c"))
    root = fx.tiered_pickles(tmp_path / "t", SPLITS, per_class=1)
    (root / "tiered-imagenet" / "val_labels.pkl").unlink()
    with pytest.raises(UserError, match="Missing val_labels.pkl"):
        tiered_imagenet.load(root, cache_dir=str(tmp_path / "c"))


def test_load_dataset_dispatch_and_data_command(tmp_path, run_cli):
    root = fx.mini_csv(tmp_path / "mini", SPLITS, per_class=4)
    ds = load_dataset({"name": "mini_imagenet", "root": str(root), "image_size": 8, "channels": 3,
                       "format": "auto", "download": False}, {"data_dir": str(tmp_path)})
    assert ds.name == "mini_imagenet"
    code, out, err = run_cli("data", "dataset=mini_imagenet", f"dataset.root={root}", "dataset.image_size=8")
    assert code == 0, err
    assert "1 unreadable file(s) skipped" in out
    assert f"{root}/images/broken.JPEG" in fx.flat(out)  # reported by path
    tiered = fx.tiered_pickles(tmp_path / "tiered", SPLITS, per_class=2)
    code, out, err = run_cli("data", "dataset=tiered_imagenet", f"dataset.root={tiered}", "dataset.image_size=8")
    assert code == 0, err
    assert "train_images_png.pkl[6]" in fx.flat(out)


def test_data_command_missing_dataset_is_one_sentence(tmp_path, run_cli):
    code, _out, err = run_cli("data", "dataset=mini_imagenet", f"dataset.root={tmp_path / 'nope'}")
    assert code == 2
    assert "does not exist" in err and "Traceback" not in err


def test_protonet_trains_and_tests_end_to_end(tmp_path, run_cli):
    root = fx.mini_csv(tmp_path / "mini", {"train": 6, "val": 5, "test": 5}, per_class=4, corrupt=False)
    code, _out, err = run_cli("train", "dataset=mini_imagenet", f"dataset.root={root}", "dataset.image_size=16",
                             "dataset.augment=metaoptnet", "trainer=fast", "trainer.iterations=3",
                             "trainer.val_every=3", "trainer.val_episodes=2", "eval.episodes=4",
                             "episode.train.n_query=2", "episode.test.n_query=2", "backbone.hidden=8",
                             f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, err
    import json
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "mini_imagenet" and 0 <= summary["test"]["acc"] <= 100
