"""Omniglot from the official release layout (zips and folders): Vinyals and Lake splits, the
two minimal background sets, within-alphabet episodes end to end, corrupt files, errors."""
from __future__ import annotations

import json

import pytest
import torch

import data_fixtures as fx
from metafsl.data import omniglot
from metafsl.data.sampler import EpisodeSampler
from metafsl.errors import UserError

BACKGROUND = {"Greek": 3, "Hebrew": 2}
EVALUATION = {"Tengwar": 4, "Keble": 2}


@pytest.fixture
def release(tmp_path):
    """images_background.zip (with a corrupt file), images_evaluation/ extracted, and the two
    minimal sets (one zipped, one extracted)."""
    root = tmp_path / "omniglot"
    fx.omniglot_set(root, "images_background", BACKGROUND, as_zip=True, corrupt=True)
    fx.omniglot_set(root, "images_evaluation", EVALUATION, as_zip=False)
    fx.omniglot_set(root, "images_background_small1", {"Greek": 2}, as_zip=True)
    fx.omniglot_set(root, "images_background_small2", {"Hebrew": 1, "Latin": 2}, as_zip=False)
    return root


def test_vinyals_split_uses_the_table(release, tmp_path):
    table = omniglot.vinyals_split()
    assert table["Greek/character01"] == "train" and table["Hebrew/character01"] == "val"
    assert table["Tengwar/character01"] == "test" and table["Keble/character01"] == "test"
    ds = omniglot.load(release, image_size=10, cache_dir=str(tmp_path / "c"))
    assert {k: s.n_classes for k, s in ds.splits.items()} == {"train": 12, "val": 8, "test": 24}
    assert ds["train"].counts().tolist() == [4] * 12
    assert len(ds.skipped) == 1 and ds.skipped[0].endswith("images_background.zip:images_background/Greek/character01/broken_99.png")


def test_rotations_are_rotated_copies(release, tmp_path):
    ds = omniglot.load(release, image_size=10, cache_dir=str(tmp_path / "c"))
    s = ds["test"]
    first, rot90 = s.images[s.labels == 0], s.images[s.labels == 1]
    assert s.class_names[:2] == ["Keble/character01/rot000", "Keble/character01/rot090"]
    assert torch.equal(torch.rot90(first, 1, dims=(2, 3)), rot90)


def test_ink_is_inverted(release, tmp_path):
    ds = omniglot.load(release, image_size=20, rotations=False, cache_dir=str(tmp_path / "c"))
    # fixture drawings are ~20% ink (black) on white: after inversion most pixels are 0
    assert float((ds["train"].images == 0).float().mean()) > 0.6


def test_lake_split_and_minimal_sets(release, tmp_path):
    c = str(tmp_path / "c")
    ds = omniglot.load(release, 10, split="lake", rotations=False, lake_val_fraction=0.0, cache_dir=c)
    assert ds["train"].n_classes == 5 and ds["test"].n_classes == 6 and "val" not in ds.splits
    ds = omniglot.load(release, 10, split="lake", rotations=True, lake_val_fraction=0.4, cache_dir=c)
    assert ds["train"].n_classes + ds["val"].n_classes == 20 and ds["val"].n_classes == 8
    assert ds["test"].group_names == ["Keble", "Tengwar"]
    small1 = omniglot.load(release, 10, split="lake", background="images_background_small1", rotations=False,
                           lake_val_fraction=0.0, cache_dir=c)
    small2 = omniglot.load(release, 10, split="lake", background="images_background_small2", rotations=False,
                           lake_val_fraction=0.0, cache_dir=c)
    assert small1["train"].n_classes == 2 and small2["train"].n_classes == 3
    assert small2["train"].group_names == ["Hebrew", "Latin"]
    with pytest.raises(UserError, match="dataset.background must be one of"):
        omniglot.load(release, 10, split="lake", background="images_evaluation", cache_dir=c)


def test_within_alphabet_episodes_stay_in_one_alphabet(release, tmp_path):
    ds = omniglot.load(release, 10, split="lake", lake_val_fraction=0.0, cache_dir=str(tmp_path / "c"))
    test = ds["test"]  # Keble: 2 chars x 4 rotations = 8 classes, Tengwar: 16 classes
    sampler = EpisodeSampler(test, n_way=8, n_shot=1, n_query=1, seed=0, within_group=True)
    for _ in range(20):
        idx = sampler.episode_indices()
        classes = test.labels[idx[:, 0]]
        assert len(set(test.groups[classes].tolist())) == 1
    with pytest.raises(UserError, match=r"no alphabet of the .* has 17 classes \(the largest has 16\); lower"):
        EpisodeSampler(test, n_way=17, n_shot=1, n_query=1, within_group=True)


def test_missing_set_names_the_path(tmp_path):
    with pytest.raises(UserError, match=r"not found under .*images_background\.zip"):
        omniglot.load(tmp_path / "none", cache_dir=str(tmp_path / "c"))


def test_lake_split_within_alphabet_end_to_end(release, tmp_path, run_cli):
    code, out, err = run_cli(
        "train", "dataset=omniglot", f"paths.data_dir={release.parent}", "dataset.split=lake",
        "dataset.image_size=16", "dataset.lake_val_fraction=0.4", "episode.within_alphabet=true",
        "episode.train.n_way=4", "episode.test.n_way=4",
        "trainer=fast", "trainer.iterations=3", "trainer.val_every=3", "trainer.val_episodes=2",
        "eval.episodes=4", "episode.train.n_query=2", "episode.test.n_query=2", "backbone.hidden=8",
        f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"]["episodes"] == 4
    code, out, err = run_cli("data", "dataset=omniglot", f"paths.data_dir={release.parent}",
                             "dataset.split=lake", "dataset.background=images_background_small2",
                             "dataset.rotations=false", "dataset.lake_val_fraction=0")
    assert code == 0, err
    assert "0 unreadable files" in out


def test_data_command_reports_the_corrupt_file(release, run_cli):
    code, out, err = run_cli("data", "dataset=omniglot", f"paths.data_dir={release.parent}", "dataset.image_size=10")
    assert code == 0, err
    assert "1 unreadable file(s) skipped" in out and "broken_99.png" in fx.flat(out)


@pytest.fixture
def episode_alphabets(monkeypatch):
    """{split name: [the alphabets of each episode drawn]} over every episode sampler the engine
    builds (training, validation, test), read from the class names (<Alphabet>/<character>/...),
    not from the groups the sampler is given."""
    seen = {}
    draw = EpisodeSampler.episode_indices

    def spy(self):
        idx = draw(self)
        names = self.split.class_names
        classes = self.split.labels[idx[:, 0]].tolist()
        seen.setdefault(self.split_name, []).append({names[c].split("/")[0] for c in classes})
        return idx

    monkeypatch.setattr(EpisodeSampler, "episode_indices", spy)
    return seen


def test_within_alphabet_holds_for_every_episode_of_train_and_test(release, tmp_path, run_cli, episode_alphabets):
    """episode.within_alphabet=true through the CLI: every training, validation and test episode
    (`metafsl train`, then `metafsl test ... episode.within_alphabet=true`) draws its classes from one
    alphabet; the same run tested with within_alphabet=false shows that these episodes would mix."""
    run = tmp_path / "run"
    code, _, err = run_cli(
        "train", "dataset=omniglot", f"paths.data_dir={release.parent}", "dataset.split=lake",
        "dataset.image_size=16", "dataset.lake_val_fraction=0.4", "episode.within_alphabet=true",
        "episode.train.n_way=4", "episode.test.n_way=4", "episode.train.n_query=1", "episode.test.n_query=1",
        "trainer=fast", "trainer.iterations=4", "trainer.val_every=2", "trainer.val_episodes=6",
        "eval.episodes=12", "backbone.hidden=8", f"hydra.run.dir={run}")
    assert code == 0, err
    assert sorted(episode_alphabets) == ["test", "train", "val"]
    for split, episodes in episode_alphabets.items():
        assert [a for a in episodes if len(a) > 1] == [], f"{split} episodes mix alphabets"
    for within, mixed in (("false", True), ("true", False)):
        episode_alphabets.clear()
        code, _, err = run_cli("test", f"run={run}", f"episode.within_alphabet={within}")
        assert code == 0, err
        assert len(episode_alphabets["test"]) == 12
        assert any(len(a) > 1 for a in episode_alphabets["test"]) is mixed, within
