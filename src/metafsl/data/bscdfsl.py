"""The four target domains of the BSCD-FSL benchmark (Guo et al., ECCV 2020), test-only, in
the on-disk layouts of their official releases as the benchmark's code reads them
(github.com/IBM/cdfsl-benchmark, ``datasets/*_few_shot.py``), under ``dataset.root``:

- ``cropdisease``: ``<root>/dataset/train/<class>/<image>`` (the Kaggle "plant-disease" release
  of PlantVillage; 38 classes);
- ``eurosat``: ``<root>/2750/<class>/<image>`` (EuroSAT.zip, RGB; 10 classes);
- ``isic``: ``<root>/ISIC2018_Task3_Training_Input/<image id>.jpg`` and
  ``<root>/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv``
  (``image`` then the one-hot columns MEL, NV, BCC, AKIEC, BKL, DF, VASC; 7 classes);
- ``chestx``: ``<root>/images/<file>`` and ``<root>/Data_Entry_2017.csv`` (NIH ChestX-ray14:
  ``Image Index``, ``Finding Labels`` separated by ``|``); as BSCD-FSL, only images with one
  finding among Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass, Nodule, Pneumothorax.

Every class is a test class: each dataset has a ``test`` split only, and training on it is
refused (``metafsl.engine.components.build``).  Images are converted to ``image_size`` and
``channels`` (a grey X-ray repeated to RGB, as BSCD-FSL does) and cached like every loader's.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable, List, Tuple

from metafsl.data.assemble import check_shape, split_from_files
from metafsl.data.base import FewShotDataset, channel_stats
from metafsl.data.cache import CacheSpec, cached_dataset
from metafsl.data.folder import scan
from metafsl.data.images import Archive
from metafsl.errors import UserError

VERSION = 1  # of this loader: a change rebuilds cached datasets
ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
CHESTX_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax")
ISIC_IMAGES = "ISIC2018_Task3_Training_Input"
ISIC_CSV = "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv"
#: where each release goes, said when its files are missing
RELEASES = {
    "cropdisease": ("<root>/dataset/train/<class>/<image> (the Kaggle plant-disease release of PlantVillage, "
                    "unpacked as BSCD-FSL expects)"),
    "eurosat": "<root>/2750/<class>/<image> (EuroSAT.zip, RGB, unpacked)",
    "isic": f"<root>/{ISIC_IMAGES}/<id>.jpg and <root>/{ISIC_CSV} (ISIC 2018 task 3 training data)",
    "chestx": ("<root>/images/<file> and <root>/Data_Entry_2017.csv (NIH ChestX-ray14 from Kaggle, the "
               "images of every images_*/images/ folder moved into one images/ folder)"),
}
Rows = List[Tuple[str, str]]  # (file relative to the root, class)


def _missing(name: str, root: Path, what: str) -> UserError:
    return UserError(f"dataset={name} found no {what} under {root}; put the official release there as "
                     f"{RELEASES[name]}, or pass dataset.root=<that folder>.")


def _class_folders(name: str, root: Path, sub: str) -> Tuple[Rows, List[str]]:
    base = root / sub
    if not base.is_dir():
        raise _missing(name, root, f"{sub}/ folder")
    _, groups, ignored = scan(Archive(base).names(), root=str(base))
    rows = [(f"{sub}/{f}", c) for c, files in sorted(groups.get("", {}).items()) for f in sorted(files)]
    if not rows:
        raise _missing(name, root, f"class folders of images in {sub}/")
    return rows, ignored


def _read_csv(name: str, root: Path, rel: str) -> List[List[str]]:
    path = root / rel
    if not path.is_file():
        raise _missing(name, root, rel)
    with io.open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    return rows[1:]  # the header


def _isic_rows(root: Path) -> Tuple[Rows, List[str]]:
    rows = []
    for line in _read_csv("isic", root, ISIC_CSV):
        try:
            hot = [float(v) for v in line[1:1 + len(ISIC_CLASSES)]]
        except ValueError:
            raise UserError(f"{root / ISIC_CSV} has a row that is not an image id and 7 numbers ({line[:3]}...); "
                            "use the official ground-truth file.") from None
        if len(hot) == len(ISIC_CLASSES) and any(hot):
            rows.append((f"{ISIC_IMAGES}/{line[0]}.jpg", ISIC_CLASSES[max(range(len(hot)), key=hot.__getitem__)]))
    if not (root / ISIC_IMAGES).is_dir():
        raise _missing("isic", root, f"{ISIC_IMAGES}/ folder")
    return rows, []


def _chestx_rows(root: Path) -> Tuple[Rows, List[str]]:
    rows = []
    for line in _read_csv("chestx", root, "Data_Entry_2017.csv"):
        labels = line[1].split("|") if len(line) > 1 else []
        if len(labels) == 1 and labels[0] in CHESTX_CLASSES:
            rows.append((f"images/{line[0]}", labels[0]))
    if not (root / "images").is_dir():
        raise _missing("chestx", root, "images/ folder")
    return rows, []


def _load(name: str, listing: Callable[[Path], Tuple[Rows, List[str]]], root: Path, image_size: int,
          channels: int, cache_dir: str, cache_check: str) -> FewShotDataset:
    root = Path(root)
    check_shape(image_size, channels)
    if not root.is_dir():
        raise _missing(name, root, "folder")
    rows, ignored = listing(root)
    rows = [(f, c) for f, c in rows if (root / f).is_file()] if name in ("isic", "chestx") else rows
    if not rows:
        raise _missing(name, root, "listed image that exists")
    spec = CacheSpec(name, root, cache_dir, {"size": image_size, "channels": channels, "src": str(root.resolve())},
                     [root / f for f, _ in rows], VERSION, cache_check)

    def decode() -> FewShotDataset:
        classes = sorted({c for _, c in rows}, key=_order(name))
        split, bad = split_from_files(lambda f: (root / f).read_bytes(), rows, classes, image_size, channels,
                                      str(root))
        if not len(split.labels):
            raise UserError(f"None of the {len(rows)} images of dataset={name} under {root} could be read.")
        mean, std = channel_stats(split.images)
        return FewShotDataset(name, {"test": split}, mean, std, bad)

    ds = cached_dataset(spec, decode)
    ds.ignored = ignored
    return ds


def _order(name: str) -> Callable[[str], object]:
    fixed = {"isic": ISIC_CLASSES, "chestx": CHESTX_CLASSES}.get(name)
    return (lambda c: fixed.index(c)) if fixed else (lambda c: c)


def load_cropdisease(root: Path, image_size: int = 84, channels: int = 3, cache_dir: str = "~/.cache/metafsl",
                     cache_check: str = "stat") -> FewShotDataset:
    return _load("cropdisease", lambda r: _class_folders("cropdisease", r, "dataset/train"), root, image_size,
                 channels, cache_dir, cache_check)


def load_eurosat(root: Path, image_size: int = 84, channels: int = 3, cache_dir: str = "~/.cache/metafsl",
                 cache_check: str = "stat") -> FewShotDataset:
    return _load("eurosat", lambda r: _class_folders("eurosat", r, "2750"), root, image_size, channels,
                 cache_dir, cache_check)


def load_isic(root: Path, image_size: int = 84, channels: int = 3, cache_dir: str = "~/.cache/metafsl",
              cache_check: str = "stat") -> FewShotDataset:
    return _load("isic", _isic_rows, root, image_size, channels, cache_dir, cache_check)


def load_chestx(root: Path, image_size: int = 84, channels: int = 3, cache_dir: str = "~/.cache/metafsl",
                cache_check: str = "stat") -> FewShotDataset:
    return _load("chestx", _chestx_rows, root, image_size, channels, cache_dir, cache_check)

