"""The decode cache is keyed on what its content depends on (every source file, by its resolved
path: its size, modification and change times and inode, or with ``dataset.cache_check=hash`` its
content; the loader's version; the options), says in one line when it is rebuilt and why, and is
optional: a cache that cannot be written is a warning, never a failure."""
from __future__ import annotations

import errno
import logging
import os

import pytest

import data_fixtures as fx
from metafsl.data import cache, folder, mini_imagenet, omniglot


@pytest.fixture
def cache_log(monkeypatch):
    """The cache's notices (logger ``metafsl.data.cache``) as the CLI prints them: info as is, a
    warning after 'warning: ' (``metafsl.reporting.console.NoticeHandler``)."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger(cache.__name__)
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)

    def lines() -> list:
        got = [("warning: " if r.levelno >= logging.WARNING else "") + r.getMessage() for r in records]
        records.clear()
        return got

    yield lines
    logger.removeHandler(handler)


def _rebuilt(cache_log) -> list:
    return [ln for ln in cache_log() if ln.startswith("Rebuilding")]


def test_unreadable_image_fixed_in_place_is_read_again_csv(tmp_path, cache_log):
    root = fx.mini_csv(tmp_path / "mini", {"train": 2, "val": 1, "test": 1}, per_class=2)
    c = str(tmp_path / "c")
    assert mini_imagenet.load(root, image_size=8, cache_dir=c).skipped == [f"{root / 'images'}/broken.JPEG"]
    assert _rebuilt(cache_log) == []  # first build: nothing to say
    fx.write(root / "images" / "broken.JPEG", fx.png(42, fmt="JPEG"))  # fixed in place
    ds = mini_imagenet.load(root, image_size=8, cache_dir=c)
    assert ds.skipped == [] and ds["train"].counts().tolist() == [3, 2]
    assert _rebuilt(cache_log) == [f"Rebuilding the mini_imagenet cache (1 file(s) changed: {root}/images/broken.JPEG)."]
    mini_imagenet.load(root, image_size=8, cache_dir=c)
    assert _rebuilt(cache_log) == []  # current again


def _replace_keeping_size_and_mtime(path, data: bytes) -> None:
    """Replace ``path`` by a file of the same size holding ``data``, then give it back the old
    modification time (as `cp -p` or an archive extraction can): only the change time, the
    inode and the content tell them apart."""
    before = os.stat(path)
    assert len(data) == before.st_size
    fx.write(path.with_name(path.name + ".new"), data)
    os.replace(path.with_name(path.name + ".new"), path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.mark.parametrize("check", ["stat", "hash"])
def test_image_fixed_in_place_with_the_same_size_and_mtime_is_read_again(tmp_path, run_cli, check):
    """miniImageNet's CSV layout through `metafsl data`: a corrupt image replaced by a good one
    of the same size, with the same modification time, is decoded again, not reported unreadable
    from the cache (both with the default check and with dataset.cache_check=hash)."""
    root = fx.mini_csv(tmp_path / "mini", {"train": 2, "val": 1, "test": 1}, per_class=2)
    good = fx.png(42, fmt="JPEG")
    fx.write(root / "images" / "broken.JPEG", b"\xff" * len(good))  # corrupt, as large as the fix
    args = ("data", "dataset=mini_imagenet", f"dataset.root={root}", "dataset.image_size=8",
            f"dataset.cache_check={check}")
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "1 unreadable file(s) skipped" in out and "broken.JPEG" in out
    _replace_keeping_size_and_mtime(root / "images" / "broken.JPEG", good)
    code, out, err = run_cli(*args)
    assert code == 0, err
    rebuilt, *shown = out.splitlines()
    assert rebuilt.startswith("Rebuilding the mini_imagenet cache (1 file(s) changed") and "broken.JPEG" in rebuilt
    assert "0 unreadable files." in out and "broken.JPEG" not in "\n".join(shown)


def test_cache_check_hash_compares_content_not_times(tmp_path, cache_log):
    """A file touched but unchanged rebuilds the default (stat) cache, not the hash-checked one;
    the two checks keep separate cache files."""
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)
    c = str(tmp_path / "c")
    for check in ("stat", "hash"):
        folder.load(root, image_size=8, cache_dir=c, cache_check=check)
    assert len(list((root / ".metafsl-cache").glob("folder-*.pt"))) == 2 and _rebuilt(cache_log) == []
    touched = root / "class01" / "0.png"
    os.utime(touched, ns=(os.stat(touched).st_atime_ns, os.stat(touched).st_mtime_ns + 10**9))
    folder.load(root, image_size=8, cache_dir=c, cache_check="hash")
    assert _rebuilt(cache_log) == []
    folder.load(root, image_size=8, cache_dir=c, cache_check="stat")
    assert _rebuilt(cache_log) == [f"Rebuilding the folder cache (1 file(s) changed: {touched})."]
    with pytest.raises(cache.UserError, match=r"dataset.cache_check must be one of stat, hash \(got 'md5'\)"):
        folder.load(root, image_size=8, cache_dir=c, cache_check="md5")


def test_same_data_dir_by_two_spellings_reuses_one_cache(tmp_path, run_cli, cache_log):
    """`x/../data`, `data` and a symbolic link to it are one data dir: the cache built through one
    spelling is used as is through the others (no rebuild, one cache file, left untouched)."""
    data = tmp_path / "data"
    root = fx.mini_csv(data / "mini_imagenet", {"train": 2, "val": 1, "test": 1}, per_class=2)
    (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    spellings = [data, tmp_path / "x" / ".." / "data", tmp_path / "link"]
    for n, spelled in enumerate(spellings):
        code, out, err = run_cli("data", "dataset=mini_imagenet", f"paths.data_dir={spelled}",
                                 "dataset.image_size=8")
        assert code == 0, err
        assert "1 unreadable file(s) skipped" in out
        (pt,) = (root / ".metafsl-cache").glob("mini_imagenet-*.pt")
        if n == 0:
            built = os.stat(pt).st_mtime_ns
        assert os.stat(pt).st_mtime_ns == built and _rebuilt(cache_log) == [], spelled


def test_omniglot_set_by_two_spellings_reuses_one_cache(tmp_path, cache_log, monkeypatch):
    data = tmp_path / "data"
    fx.omniglot_set(data / "omniglot", "images_background", {"Greek": 2})
    fx.omniglot_set(data / "omniglot", "images_evaluation", {"Tengwar": 2}, as_zip=True)
    (tmp_path / "x").mkdir()
    kw = dict(image_size=8, split="lake", rotations=False, lake_val_fraction=0.0, cache_dir=str(tmp_path / "c"))
    omniglot.load(data / "omniglot", **kw)
    calls, read = [], omniglot._read_set
    monkeypatch.setattr(omniglot, "_read_set", lambda *a: calls.append(a) or read(*a))
    ds = omniglot.load(tmp_path / "x" / ".." / "data" / "omniglot", **kw)
    assert calls == [] and _rebuilt(cache_log) == [] and ds["train"].n_classes == 2


def test_unreadable_image_fixed_in_place_is_read_again_omniglot_folder(tmp_path, cache_log):
    root = tmp_path / "omniglot"
    fx.omniglot_set(root, "images_background", {"Greek": 3}, corrupt=True)
    fx.omniglot_set(root, "images_evaluation", {"Tengwar": 2})
    c = str(tmp_path / "c")
    kw = dict(image_size=8, split="lake", rotations=False, lake_val_fraction=0.0, cache_dir=c)
    assert len(omniglot.load(root, **kw).skipped) == 1
    fx.write(root / "images_background" / "Greek" / "character01" / "broken_99.png", fx.glyph_png(5))
    ds = omniglot.load(root, **kw)
    assert ds.skipped == [] and ds["train"].counts().tolist() == [5, 4, 4]
    assert "Rebuilding the omniglot-images_background cache (1 file(s) changed" in "".join(_rebuilt(cache_log))


def test_rebuild_line_through_the_data_command(tmp_path, run_cli, cache_log):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2)
    args = ("data", "dataset=folder", f"dataset.root={root}", "dataset.image_size=8", "dataset.channels=1")
    code, out, _ = run_cli(*args)
    assert code == 0 and "1 unreadable file(s) skipped" in out and _rebuilt(cache_log) == []
    fx.write(root / "class00" / "broken.png", fx.png(7))
    fx.write(root / "class03" / "new.png", fx.png(8))
    (root / "class04" / "1.png").unlink()
    code, out, _ = run_cli(*args)
    assert code == 0 and "0 unreadable files." in out
    (line,) = _rebuilt(cache_log)
    assert line in out  # the CLI shows the library's notice
    assert line.startswith("Rebuilding the folder cache (1 file(s) changed, 1 file(s) added, 1 file(s) removed:")


def test_options_name_separate_caches_and_the_loader_version_counts(tmp_path, cache_log, monkeypatch):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)
    c = str(tmp_path / "c")
    folder.load(root, image_size=8, cache_dir=c)
    folder.load(root, image_size=10, cache_dir=c)
    assert folder.load(root, image_size=8, cache_dir=c)["train"].images.shape[-1] == 8
    assert len(list((root / ".metafsl-cache").glob("folder-*.pt"))) == 2 and _rebuilt(cache_log) == []
    calls, decode = [], folder._decode
    monkeypatch.setattr(folder, "_decode", lambda *a: calls.append(1) or decode(*a))
    monkeypatch.setattr(folder, "VERSION", folder.VERSION + 1)
    folder.load(root, image_size=8, cache_dir=c)
    folder.load(root, image_size=8, cache_dir=c)
    assert calls == [1]
    assert _rebuilt(cache_log) == ["Rebuilding the folder cache (metafsl reads this dataset differently since it was built)."]


def test_truncated_cache_file_is_rebuilt(tmp_path, cache_log):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)
    folder.load(root, image_size=8, cache_dir=str(tmp_path / "c"))
    (pt,) = (root / ".metafsl-cache").glob("folder-*.pt")
    pt.write_bytes(pt.read_bytes()[:100])
    assert folder.load(root, image_size=8, cache_dir=str(tmp_path / "c"))["train"].n_classes == 3
    assert _rebuilt(cache_log) == ["Rebuilding the folder cache (the cache file is unreadable)."]


def test_cache_that_cannot_be_created_is_a_warning(tmp_path, run_cli, cache_log):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)
    root.chmod(0o555)  # read-only data: the cache goes to paths.cache_dir ...
    blocker = fx.write(tmp_path / "a-file", b"")  # ... which cannot be created under a file
    try:
        code, out, err = run_cli("data", "dataset=folder", f"dataset.root={root}", "dataset.image_size=8",
                                 "dataset.channels=1", f"paths.cache_dir={blocker}/cache")
    finally:
        root.chmod(0o755)
    assert code == 0 and "Traceback" not in err and "0 unreadable files." in out
    assert err.startswith("warning: cannot create the dataset cache folder")  # shown by the CLI
    assert cache_log() == [f"warning: cannot create the dataset cache folder {blocker}/cache (Not a directory); "
                           "continuing without the cache (it only saves time)."]
    assert not (root / ".metafsl-cache").exists()


def test_full_disk_while_writing_the_cache_is_a_warning(tmp_path, cache_log, monkeypatch):
    root = fx.class_folders(tmp_path / "imgs", n_classes=5, per_class=2, corrupt=False)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.torch, "save", full)
    ds = folder.load(root, image_size=8, cache_dir=str(tmp_path / "c"))
    assert ds["train"].n_classes == 3
    (line,) = cache_log()
    assert line.startswith("warning: cannot write the dataset cache") and "No space left on device" in line
    assert list((root / ".metafsl-cache").iterdir()) == []  # no cache, no temp file left


def test_generated_glyphs_are_rendered_once_even_into_a_new_cache_folder(tmp_path, monkeypatch):
    """The first load creates the cache folder; the second must find its file there, not look
    beside a "data root" that only exists since the first load (it rendered twice before)."""
    from metafsl.data import glyphs

    folder = tmp_path / "new" / "cache"
    options = dict(n_classes=20, examples_per_class=2, cache_dir=str(folder))
    first = glyphs.load(**options)
    monkeypatch.setattr(glyphs, "generate", lambda **_: pytest.fail("the glyphs were rendered again"))
    second = glyphs.load(**options)
    assert second.splits["train"].images.equal(first.splits["train"].images)
    assert len(list(folder.glob("glyphs-*.pt"))) == 1 and not (folder / ".metafsl-cache").exists()
