"""Archive problems (truncated or empty zips) and downloads that cannot happen are one
sentence each, through the real loaders and the CLI, never a traceback."""
from __future__ import annotations

import time

import pytest

import data_fixtures as fx
from metafsl.data import download, folder, lake_runs, omniglot
from metafsl.errors import UserError

#: nothing listens on port 9 locally: a download attempt fails at once, with or without internet
UNREACHABLE = "http://127.0.0.1:9/{}.zip"


def _one_sentence(code, err):
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error:") and err.strip().count("\n") == 0, err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"], ids=["empty", "truncated"])
def test_bad_zip_as_folder_root_through_the_cli(tmp_path, run_cli, content):
    z = fx.write(tmp_path / "mine.zip", content)
    code, _out, err = run_cli("data", "dataset=folder", f"dataset.root={z}", "dataset.image_size=8")
    _one_sentence(code, err)
    assert f"{z} is not a readable zip archive (BadZipFile" in err and "download or create it again" in err


def test_truncated_zip_cut_from_a_real_one(tmp_path):
    src = fx.class_folders(tmp_path / "imgs", n_classes=4, per_class=2, corrupt=False)
    z = fx.zip_folder(src, tmp_path / "mine.zip")
    z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])  # an interrupted download
    with pytest.raises(UserError, match="is not a readable zip archive"):
        folder.load(z, image_size=8, cache_dir=str(tmp_path / "c"))


def test_bad_omniglot_and_lake_zips(tmp_path, run_cli):
    root = tmp_path / "omniglot"
    fx.write(root / "images_background.zip", b"")
    fx.omniglot_set(root, "images_evaluation", {"Tengwar": 2})
    code, _out, err = run_cli("data", "dataset=omniglot", f"dataset.root={root}", "dataset.image_size=8")
    _one_sentence(code, err)
    assert "images_background.zip is not a readable zip archive" in err
    bad = fx.write(tmp_path / "all_runs.zip", b"PK\x05\x06")
    with pytest.raises(UserError, match="all_runs.zip is not a readable zip archive"):
        lake_runs.read_runs(bad, image_size=28)


def test_download_offline_is_one_sentence_fast(tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(omniglot, "URL", UNREACHABLE)
    root = tmp_path / "omniglot"
    t0 = time.perf_counter()
    code, _out, err = run_cli("data", "dataset=omniglot", f"dataset.root={root}", "dataset.download=true")
    assert time.perf_counter() - t0 < 30
    _one_sentence(code, err)
    assert "Could not download http://127.0.0.1:9/images_background.zip (" in err
    assert f"place images_background.zip in {root} by hand." in err
    assert not list(root.glob("*.part"))


def test_download_into_a_location_that_cannot_be_created(tmp_path):
    blocker = fx.write(tmp_path / "a-file", b"")
    src = fx.write(tmp_path / "src.bin", b"x")
    with pytest.raises(UserError, match=r"Could not download .*place a.bin in .*a-file/sub by hand"):
        download.fetch(src.as_uri(), blocker / "sub" / "a.bin")


def test_fetch_without_a_published_checksum(tmp_path):
    src = fx.write(tmp_path / "src.bin", b"payload")
    assert download.fetch(src.as_uri(), tmp_path / "out" / "a.bin").read_bytes() == b"payload"


def test_damaged_member_of_a_zip(tmp_path, run_cli):
    z = fx.lake_runs(tmp_path / "all_runs.zip", n_runs=1)
    data = bytearray(z.read_bytes())
    at = data.find(b"run01/class_labels.txt") + len("run01/class_labels.txt")  # first (local) header
    data[at + 5] ^= 0xFF  # flip a byte of the compressed (stored) labels: the CRC no longer matches
    z.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"run01/class_labels.txt in .*all_runs.zip cannot be read \(BadZipFile"):
        lake_runs.read_runs(z, image_size=28)
