"""CIFAR-FS, FC100 (from the CIFAR-100 python archive) and CUB-200-2011 loaders, against
fixtures in the real on-disk layouts; downloads fail fast offline."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import data_fixtures as fx
from conftest import split_table
from metafsl.data import cifar, cub
from metafsl.data.download import fetch, md5_of
from metafsl.errors import UserError

SPLITS = Path(cifar.__file__).parent / "splits"
CIFARFS = json.loads((SPLITS / "cifarfs.json").read_text())
FC100 = json.loads((SPLITS / "fc100.json").read_text())
FINE = sorted(CIFARFS["train"] + CIFARFS["val"] + CIFARFS["test"])
COARSE = sorted(FC100["train"] + FC100["val"] + FC100["test"])


def test_split_files_are_the_published_sizes():
    assert [len(CIFARFS[s]) for s in ("train", "val", "test")] == [64, 16, 20] and len(FINE) == 100
    assert [len(FC100[s]) for s in ("train", "val", "test")] == [12, 4, 4] and len(COARSE) == 20
    spec = json.loads((SPLITS / "cub.json").read_text())
    assert [len(spec[s]) for s in ("train", "val", "test")] == [100, 50, 50]


@pytest.mark.parametrize("archive", [False, True])
def test_cifarfs(tmp_path, archive):
    root = fx.cifar100(tmp_path / "cifar100", FINE, COARSE, per_class=(2, 1), archive=archive)
    ds = cifar.load("cifarfs", root, cache_dir=str(tmp_path / "c"))
    assert {k: s.n_classes for k, s in ds.splits.items()} == {"train": 64, "val": 16, "test": 20}
    assert ds["train"].images.shape == (64 * 3, 3, 32, 32)
    assert ds["test"].class_names == CIFARFS["test"]
    assert set(ds["train"].counts().tolist()) == {3}  # train and test images of CIFAR-100 together


def test_cifar_pixels_are_the_archive_pixels(tmp_path):
    root = fx.cifar100(tmp_path / "c100", FINE, COARSE, per_class=(1, 0))
    raw = fx.pickle.loads((root / "cifar-100-python" / "train").read_bytes())
    ds = cifar.load("cifarfs", root, cache_dir=str(tmp_path / "c"))
    name = CIFARFS["train"][5]
    row = raw["data"][raw["fine_labels"].index(FINE.index(name))]
    got = ds["train"].images[ds["train"].labels == 5][0]
    assert torch.equal(got, torch.from_numpy(row.reshape(3, 32, 32)))


def test_fc100_split_by_superclass(tmp_path):
    root = fx.cifar100(tmp_path / "cifar100", FINE, COARSE, per_class=(1, 1))
    ds = cifar.load("fc100", root, image_size=16, cache_dir=str(tmp_path / "c"))
    assert {k: s.n_classes for k, s in ds.splits.items()} == {"train": 60, "val": 20, "test": 20}
    assert ds["test"].group_names == sorted(FC100["test"], key=FC100["test"].index)
    assert ds["train"].images.shape[-1] == 16
    # every class sits in the superclass the archive says (fixture: fine i -> coarse i % 20)
    for split in ds.splits.values():
        for k, name in enumerate(split.class_names):
            assert split.group_names[int(split.groups[k])] == COARSE[FINE.index(name) % 20]
    names = [set(s.class_names) for s in ds.splits.values()]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])


def test_cifar_missing_and_broken(tmp_path):
    with pytest.raises(UserError, match="place cifar-100-python.tar.gz"):
        cifar.load("cifarfs", tmp_path / "none", cache_dir=str(tmp_path / "c"))
    root = fx.cifar100(tmp_path / "c100", FINE, COARSE, per_class=(1, 1))
    (root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(UserError, match="Missing meta"):
        cifar.load("fc100", root, cache_dir=str(tmp_path / "c"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cifar-100-python.tar.gz").write_bytes(b"truncated")
    with pytest.raises(UserError, match="Could not read .*cifar-100-python.tar.gz"):
        cifar.load("cifarfs", tmp_path / "bad", cache_dir=str(tmp_path / "c"))


#: nothing listens on port 9 locally: a download attempt fails at once, with or without internet
UNREACHABLE = "http://127.0.0.1:9/cifar-100-python.tar.gz"


def test_download_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "URL", UNREACHABLE)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="Could not download .* place cifar-100-python.tar.gz in"):
        cifar.load("cifarfs", tmp_path / "dl", cache_dir=str(tmp_path / "c"), download=True)
    assert time.perf_counter() - t0 < 35
    assert not list((tmp_path / "dl").glob("*.part"))


def test_fetch_verifies_the_checksum(tmp_path):
    src = fx.write(tmp_path / "src.bin", b"payload" * 1000)
    good = md5_of(src)
    assert fetch(src.as_uri(), tmp_path / "out" / "a.bin", good).read_bytes() == src.read_bytes()
    with pytest.raises(UserError, match="does not match its published MD5"):
        fetch(src.as_uri(), tmp_path / "out" / "b.bin", "0" * 32)
    assert not (tmp_path / "out" / "b.bin").exists()


def test_cub(tmp_path, run_cli):
    spec = json.loads((SPLITS / "cub.json").read_text())
    classes = spec["train"] + spec["val"] + spec["test"]
    root = fx.cub(tmp_path / "cub", classes, per_class=2)
    ds = cub.load(root, image_size=8, cache_dir=str(tmp_path / "c"))
    assert {k: s.n_classes for k, s in ds.splits.items()} == {"train": 100, "val": 50, "test": 50}
    assert set(ds["train"].counts().tolist()) == {2}
    assert ds["val"].class_names == spec["val"]
    images = root / "CUB_200_2011" / "images"
    assert ds.skipped == [f"{images}/{classes[0]}/broken_0001.jpg"]
    # the CUB_200_2011 folder itself is also accepted as root
    assert cub.load(root / "CUB_200_2011", 8, cache_dir=str(tmp_path / "c"))["test"].n_classes == 50
    code, out, err = run_cli("data", "dataset=cub", f"dataset.root={root}", "dataset.image_size=8")
    assert code == 0, err
    assert "1 unreadable file(s) skipped" in out and "broken_0001.jpg" in fx.flat(out)


def test_cub_archive_is_extracted(tmp_path):
    spec = json.loads((SPLITS / "cub.json").read_text())
    src = fx.cub(tmp_path / "src", spec["train"] + spec["val"] + spec["test"], per_class=1, corrupt=False)
    import tarfile
    (tmp_path / "cub").mkdir()
    with tarfile.open(tmp_path / "cub" / "CUB_200_2011.tgz", "w:gz") as tar:
        tar.add(src / "CUB_200_2011", "CUB_200_2011")
    ds = cub.load(tmp_path / "cub", image_size=8, cache_dir=str(tmp_path / "c"))
    assert ds["train"].images.shape[0] == 100


def test_cub_missing_class_folder(tmp_path):
    spec = json.loads((SPLITS / "cub.json").read_text())
    root = fx.cub(tmp_path / "cub", spec["train"] + spec["val"], per_class=1, corrupt=False)
    with pytest.raises(UserError, match="50 of the 200 CUB class folders are missing"):
        cub.load(root, cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="place CUB_200_2011.tgz"):
        cub.load(tmp_path / "nothing", cache_dir=str(tmp_path / "c"))


def test_cifarfs_through_the_cli(tmp_path, run_cli, monkeypatch):
    data = tmp_path / "data"
    fx.cifar100(data / "cifar100", FINE, COARSE, per_class=(1, 1), archive=True)
    # cifarfs and fc100 share <data_dir>/cifar100 by default
    for name, counts in (("cifarfs", (64, 16, 20)), ("fc100", (60, 20, 20))):
        code, out, err = run_cli("data", f"dataset={name}", f"paths.data_dir={data}")
        assert code == 0, err
        table = split_table(out)
        assert tuple(table[s]["classes"] for s in ("train", "val", "test")) == counts
    monkeypatch.setattr(cifar, "URL", UNREACHABLE)
    code, out, err = run_cli("data", "dataset=cifarfs", f"paths.data_dir={tmp_path / 'nodata'}",
                             "dataset.download=true")
    assert code == 2 and "Could not download" in err and "Traceback" not in err
