"""Real Omniglot (../shared/data/omniglot, official zips): the published split sizes.
Skipped when the data is absent."""
from __future__ import annotations

from conftest import shared
from metafsl.data import omniglot


def test_vinyals_and_lake_splits(tmp_path_factory):
    root = shared("omniglot")
    cache = str(tmp_path_factory.mktemp("omniglot-cache"))
    ds = omniglot.load(root, cache_dir=cache)
    # 1028 / 172 / 423 characters x 4 rotations
    assert {k: s.n_classes for k, s in ds.splits.items()} == {"train": 4112, "val": 688, "test": 1692}
    assert set(ds["train"].counts().tolist()) == {20} and not ds.skipped
    lake = omniglot.load(root, split="lake", rotations=False, lake_val_fraction=0.0, cache_dir=cache)
    assert lake["train"].n_classes == 964 and lake["test"].n_classes == 659
    assert len(lake["train"].group_names) == 30 and len(lake["test"].group_names) == 20
    rot = omniglot.load(root, split="lake", rotations=True, lake_val_fraction=0.0, cache_dir=cache)
    assert rot["train"].n_classes == 4 * 964 and rot["test"].n_classes == 4 * 659
    for name, n in (("images_background_small1", 136), ("images_background_small2", 156)):
        small = omniglot.load(root, split="lake", background=name, rotations=False, lake_val_fraction=0.0,
                              cache_dir=cache)
        assert small["train"].n_classes == n and len(small["train"].group_names) == 5
