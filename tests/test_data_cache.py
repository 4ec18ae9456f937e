"""The decode cache is keyed on what its content depends on (every source file's size and
modification time, the loader's version, the options), says in one line when it is rebuilt
and why, and is optional: a cache that cannot be written is a warning, never a failure."""
from __future__ import annotations

import errno

import data_fixtures as fx
from metafsl.data import cache, folder, mini_imagenet, omniglot


def _rebuilt(capsys) -> list:
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Rebuilding")]


def test_unreadable_image_fixed_in_place_is_read_again_csv(tmp_path, capsys):
    root = fx.mini_csv(tmp_path / "mini", {"train": 2, "val": 1, "test": 1}, per_class=2)
    c = str(tmp_path / "c")
    assert mini_imagenet.load(root, image_size=8, cache_dir=c).skipped == [f"{root / 'images'}/broken.JPEG"]
    assert _rebuilt(capsys) == []  # first build: nothing to say
    fx.write(root / "images" / "broken.JPEG", fx.png(42, fmt="JPEG"))  # fixed in place
    ds = mini_imagenet.load(root, image_size=8, cache_dir=c)
    assert ds.skipped == [] and ds["train"].counts().tolist() == [3, 2]
    assert _rebuilt(capsys) == [f"Rebuilding the mini_imagenet cache (1 file(s) changed: {root}/images/broken.JPEG)."]
    mini_imagenet.load(root, image_size=8, cache_dir=c)
    assert _rebuilt(capsys) == []  # current again


def test_unreadable_image_fixed_in_place_is_read_again_omniglot_folder(tmp_path, capsys):
    root = tmp_path / "omniglot"
    fx.omniglot_set(root, "images_background", {"Greek": 3}, corrupt=True)
    fx.omniglot_set(root, "images_evaluation", {"Tengwar": 2})
    c = str(tmp_path / "c")
    kw = dict(image_size=8, split="lake", rotations=False, lake_val_fraction=0.0, cache_dir=c)
    assert len(omniglot.load(root, **kw).skipped) == 1
    fx.write(root / "images_background" / "Greek" / "character01" / "broken_99.png", fx.glyph_png(5))
    ds = omniglot.load(root, **kw)
    assert ds.skipped == [] and ds["train"].counts().tolist() == [5, 4, 4]
    assert "Rebuilding the omniglot-images_background cache (1 file(s) changed" in "".join(_rebuilt(capsys))


def test_rebuild_line_through_the_data_command(tmp_path, run_cli):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2)
    args = ("data", "dataset=folder", f"dataset.root={root}", "dataset.image_size=8", "dataset.channels=1")
    code, out, _ = run_cli(*args)
    assert code == 0 and "1 unreadable file(s) skipped" in out and "Rebuilding" not in out
    fx.write(root / "class00" / "broken.png", fx.png(7))
    fx.write(root / "class03" / "new.png", fx.png(8))
    (root / "class04" / "1.png").unlink()
    code, out, _ = run_cli(*args)
    assert code == 0 and "0 unreadable files." in out
    assert fx.flat("Rebuilding the folder cache (1 file(s) changed, 1 file(s) added, 1 file(s) removed:") in fx.flat(out)


def test_options_name_separate_caches_and_the_loader_version_counts(tmp_path, capsys, monkeypatch):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)
    c = str(tmp_path / "c")
    folder.load(root, image_size=8, cache_dir=c)
    folder.load(root, image_size=10, cache_dir=c)
    assert folder.load(root, image_size=8, cache_dir=c)["train"].images.shape[-1] == 8
    assert len(list((root / ".metafsl-cache").glob("folder-*.pt"))) == 2 and _rebuilt(capsys) == []
    calls, decode = [], folder._decode
    monkeypatch.setattr(folder, "_decode", lambda *a: calls.append(1) or decode(*a))
    monkeypatch.setattr(folder, "VERSION", folder.VERSION + 1)
    folder.load(root, image_size=8, cache_dir=c)
    folder.load(root, image_size=8, cache_dir=c)
    assert calls == [1]
    assert _rebuilt(capsys) == ["Rebuilding the folder cache (metafsl reads this dataset differently since it was built)."]


def test_truncated_cache_file_is_rebuilt(tmp_path, capsys):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)
    folder.load(root, image_size=8, cache_dir=str(tmp_path / "c"))
    (pt,) = (root / ".metafsl-cache").glob("folder-*.pt")
    pt.write_bytes(pt.read_bytes()[:100])
    assert folder.load(root, image_size=8, cache_dir=str(tmp_path / "c"))["train"].n_classes == 3
    assert _rebuilt(capsys) == ["Rebuilding the folder cache (the cache file is unreadable)."]


def test_cache_that_cannot_be_created_is_a_warning(tmp_path, run_cli):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)
    root.chmod(0o555)  # read-only data: the cache goes to paths.cache_dir ...
    blocker = fx.write(tmp_path / "a-file", b"")  # ... which cannot be created under a file
    try:
        code, out, err = run_cli("data", "dataset=folder", f"dataset.root={root}", "dataset.image_size=8",
                                 "dataset.channels=1", f"paths.cache_dir={blocker}/cache")
    finally:
        root.chmod(0o755)
    assert code == 0 and "Traceback" not in err and "0 unreadable files." in out
    assert err.strip() == (f"warning: cannot create the dataset cache folder {blocker}/cache (Not a directory); "
                           "continuing without the cache (it only saves time).")
    assert not (root / ".metafsl-cache").exists()


def test_full_disk_while_writing_the_cache_is_a_warning(tmp_path, capsys, monkeypatch):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.torch, "save", full)
    ds = folder.load(root, image_size=8, cache_dir=str(tmp_path / "c"))
    assert ds["train"].n_classes == 3
    err = capsys.readouterr().err
    assert "warning: cannot write the dataset cache" in err and "No space left on device" in err
    assert list((root / ".metafsl-cache").iterdir()) == []  # no cache, no temp file left
