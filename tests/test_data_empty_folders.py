"""A dataset's extracted folders present but empty (an extraction that stopped, a copy that
missed the files): one sentence naming the folder and what it should hold, exit code 2, for
every loader that reads extracted folders; never a traceback, never a table of empty splits."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import data_fixtures as fx
from metafsl.data import cub

SPLITS_DIR = Path(cub.__file__).parent / "splits"


def _omniglot_empty(data: Path) -> None:
    (data / "omniglot" / "images_background").mkdir(parents=True)
    (data / "omniglot" / "images_evaluation").mkdir()


def _cub_empty(data: Path) -> None:
    spec = json.loads((SPLITS_DIR / "cub.json").read_text())
    for c in spec["train"] + spec["val"] + spec["test"]:
        (data / "cub" / "CUB_200_2011" / "images" / c).mkdir(parents=True)


def _mini_empty(data: Path) -> None:
    root = fx.mini_csv(data / "mini_imagenet", {"train": 2, "val": 1, "test": 1}, per_class=2)
    for f in (root / "images").iterdir():
        f.unlink()


def _mkdirs(*parts: str):
    return lambda data: (data.joinpath(*parts)).mkdir(parents=True)


#: dataset, how to make its extracted folders empty, the sentence (``{data}``: paths.data_dir)
CASES = [
    ("omniglot", _omniglot_empty,
     "Folder {data}/omniglot/images_background holds no images; it should hold Omniglot's images_background "
     "set as <Alphabet>/<character>/<drawing>.png, as in the official images_background.zip."),
    ("cub", _cub_empty,
     "The 200 class folders in {data}/cub/CUB_200_2011/images hold no images; each should hold its species' "
     ".jpg files (e.g. {data}/cub/CUB_200_2011/images/001.Black_footed_Albatross/*.jpg), as extracted from "
     "CUB_200_2011.tgz."),
    ("mini_imagenet", _mini_empty,
     "Folder {data}/mini_imagenet/images is empty; it should hold the image files that train.csv, val.csv and "
     "test.csv list (the images/ folder of the miniImageNet CSV release)."),
    ("cifarfs", _mkdirs("cifar100", "cifar-100-python"),
     "Missing train, test, meta in {data}/cifar100/cifar-100-python; it should hold CIFAR-100's train, test "
     "and meta files."),
    ("tiered_imagenet", _mkdirs("tiered_imagenet", "tiered-imagenet"),
     "No tieredImageNet files in {data}/tiered_imagenet: place train_images_png.pkl, train_labels.pkl, "
     "val_images_png.pkl, val_labels.pkl, test_images_png.pkl, test_labels.pkl in "
     "{data}/tiered_imagenet/tiered-imagenet;"),
    ("folder", _mkdirs("folder", "train", "cats"),
     "No images in class folders under {data}/folder; expected <root>/<class>/<image> or "
     "<root>/<split>/<class>/<image> with split train, val or test."),
]


@pytest.mark.parametrize("name,make_empty,sentence", CASES, ids=[c[0] for c in CASES])
def test_empty_extracted_folders_are_one_sentence(tmp_path, run_cli, name, make_empty, sentence):
    data = tmp_path / "data"
    make_empty(data)
    code, out, err = run_cli("data", f"dataset={name}", f"paths.data_dir={data}")
    assert code == 2 and "Traceback" not in err and out == ""
    assert fx.flat(sentence.format(data=data)) in fx.flat(err)
    assert err.startswith("error: ") and err.count("error: ") == 1


def test_omniglot_empty_folder_beside_its_zip_and_an_empty_zip(tmp_path, run_cli):
    root = tmp_path / "omniglot"
    fx.omniglot_set(root, "images_background", {"Greek": 2}, as_zip=True)
    (root / "images_background").mkdir()  # an extraction that left nothing
    with zipfile.ZipFile(root / "images_evaluation.zip", "w"):
        pass  # a valid zip with nothing in it
    code, _, err = run_cli("data", "dataset=omniglot", f"paths.data_dir={tmp_path}")
    assert code == 2 and fx.flat(err) == fx.flat(
        f"error: Folder {root}/images_background holds no images; it should hold Omniglot's images_background set "
        "as <Alphabet>/<character>/<drawing>.png, as in the official images_background.zip, or remove it to use "
        f"{root}/images_background.zip.")
    (root / "images_background").rmdir()
    code, _, err = run_cli("data", "dataset=omniglot", f"paths.data_dir={tmp_path}")
    assert code == 2 and fx.flat(err) == fx.flat(
        f"error: Archive {root}/images_evaluation.zip holds no images; it should hold Omniglot's images_evaluation "
        "set as images_evaluation/<Alphabet>/<character>/<drawing>.png, as in the official images_evaluation.zip.")


def test_omniglot_set_of_unreadable_images_and_a_lake_hold_out_of_everything(tmp_path, run_cli):
    root = tmp_path / "omniglot"
    fx.omniglot_set(root, "images_background", {"Greek": 2})
    fx.omniglot_set(root, "images_evaluation", {"Tengwar": 1})
    lake = ("data", "dataset=omniglot", f"paths.data_dir={tmp_path}", "dataset.split=lake",
            "dataset.image_size=8", "dataset.rotations=false")
    code, _, err = run_cli(*lake, "dataset.lake_val_fraction=0.9")
    assert code == 2 and fx.flat(err) == fx.flat(
        "error: dataset.lake_val_fraction=0.9 holds out all 2 characters of images_background for validation; "
        "it must leave some to train on (lower it, 0 for none).")
    for png in (root / "images_evaluation").rglob("*.png"):
        png.write_bytes(fx.CORRUPT)
    code, _, err = run_cli(*lake)
    assert code == 2 and fx.flat(err) == fx.flat(
        f"error: None of the 4 images in {root}/images_evaluation can be read; replace it with the official "
        "release's images_evaluation.zip (or that zip extracted).")
