"""miniImageNet (Vinyals et al. 2016; the 64/16/20 class split of Ravi & Larochelle 2017).

Two on-disk formats are read, both converging to the same ``FewShotDataset``:

- the CSV release: ``<root>/images/<file>`` plus ``train.csv``, ``val.csv``, ``test.csv`` with
  the header ``filename,label`` (one image per line; the label is the WordNet id);
- learn2learn's pickled caches: ``<root>/mini-imagenet-cache-{train,validation,test}.pkl``,
  each a dict with ``image_data`` (N, 84, 84, 3) uint8 and ``class_dict`` {class: [indices]}.

``dataset.format=auto`` takes the CSV release when ``train.csv`` is present, else the pickles.
Images are resized once to ``dataset.image_size`` (84 by default) and cached on disk.
"""
from __future__ import annotations

import csv
import functools
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from metafsl.data.assemble import (
    check_shape,
    finish_dataset,
    resize_array,
    split_from_files,
)
from metafsl.data.base import FewShotDataset, FewShotSplit
from metafsl.data.cache import CacheSpec, cached_dataset
from metafsl.data.checks import check_disjoint, check_each_once
from metafsl.data.pickles import load_pickle
from metafsl.errors import UserError

VERSION = 2  # of this loader: a change rebuilds cached datasets
CSV_FILES = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
PICKLES = {"train": "mini-imagenet-cache-train.pkl", "val": "mini-imagenet-cache-validation.pkl",
           "test": "mini-imagenet-cache-test.pkl"}
WHERE_TO_GET = ("learn2learn's pickles are published at https://zenodo.org/record/7978538 "
                "(no checksum is published, so metafsl does not fetch them itself)")


def detect_format(root: Path, fmt: str) -> str:
    if fmt not in ("auto", "csv", "pickle"):
        raise UserError(f"Unknown dataset.format '{fmt}'; choose one of: auto, csv, pickle.")
    if fmt != "auto":
        return fmt
    if (root / "train.csv").is_file():
        return "csv"
    if (root / PICKLES["train"]).is_file():
        return "pickle"
    raise UserError(
        f"No miniImageNet files found in {root}: place either the CSV release ({root}/images/ with "
        f"train.csv, val.csv, test.csv) or the pickles {', '.join(PICKLES.values())} there; {WHERE_TO_GET}."
    )


def read_csv(path: Path) -> List[Tuple[str, str]]:
    """[(filename, label)] of a release CSV (header ``filename,label``)."""
    if not path.is_file():
        raise UserError(f"File {path} does not exist; the miniImageNet CSV release needs train.csv, val.csv and test.csv beside images/.")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["filename", "label"]:
        raise UserError(f"{path} does not start with the header 'filename,label'.")
    out, first = [], {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise UserError(f"Line {n} of {path} is not 'filename,label': {','.join(row)!r}.")
        name = row[0].strip()
        if name in first:
            raise UserError(f"Line {n} of {path} repeats {name} (first on line {first[name]}); "
                            "each image must be listed once.")
        first[name] = n
        out.append((name, row[1].strip()))
    return out


def read_csvs(root: Path) -> Dict[str, List[Tuple[str, str]]]:
    """The rows of train.csv, val.csv and test.csv; no image in two files, no class in two splits."""
    rows = {split: read_csv(root / name) for split, name in CSV_FILES.items()}
    where = {split: str(root / name) for split, name in CSV_FILES.items()}
    check_each_once({where[s]: [f for f, _ in r] for s, r in rows.items()})
    check_disjoint({s: sorted({label for _, label in r}) for s, r in rows.items()}, where)
    return rows


def check_images_dir(images_dir: Path) -> None:
    """The CSV release's images/ folder exists and holds files (an extraction may leave it empty)."""
    if not images_dir.is_dir():
        raise UserError(f"Folder {images_dir} does not exist; the miniImageNet CSV release keeps its images there.")
    with os.scandir(images_dir) as entries:
        if not any(not e.name.startswith(".") for e in entries):
            raise UserError(f"Folder {images_dir} is empty; it should hold the image files that train.csv, val.csv "
                            "and test.csv list (the images/ folder of the miniImageNet CSV release).")


def load_csv(root: Path, image_size: int, channels: int,
             rows: Optional[Dict[str, List[Tuple[str, str]]]] = None) -> FewShotDataset:
    images_dir = root / "images"
    check_images_dir(images_dir)
    splits: Dict[str, FewShotSplit] = {}
    skipped: List[str] = []
    for split, listed in (rows or read_csvs(root)).items():
        classes = sorted({label for _, label in listed})
        splits[split], bad = split_from_files(lambda f: (images_dir / f).read_bytes(), listed, classes,
                                              image_size, channels, str(images_dir))
        skipped += bad
    return finish_dataset(splits, skipped, "mini_imagenet")


def read_pickle_split(path: Path, image_size: int, channels: int) -> FewShotSplit:
    data = load_pickle(path, str(path))
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise UserError(f"{path} is not a learn2learn miniImageNet cache (a dict with image_data and class_dict).")
    images, class_dict = data["image_data"], data["class_dict"]
    if getattr(images, "ndim", 0) != 4 or images.shape[-1] != 3:
        raise UserError(f"image_data in {path} has shape {getattr(images, 'shape', '?')}, not (N, H, W, 3).")
    return split_from_arrays(images, class_dict, image_size, channels, str(path))


def split_from_arrays(images, class_dict: Dict[str, Any], image_size: int, channels: int, where: str) -> FewShotSplit:
    """A split from (N, H, W, 3) uint8 images and {class: [indices]}."""
    classes = sorted(class_dict)
    per_class = []
    for c in classes:
        idx = torch.as_tensor(list(class_dict[c]), dtype=torch.long)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(images)):
            raise UserError(f"class_dict in {where} indexes image {int(idx.max())} but image_data holds {len(images)}.")
        per_class.append(idx)
    check_each_once({f"class {c} of {where}": [int(i) for i in idx] for c, idx in zip(classes, per_class, strict=True)},
                    what="Image index")
    x = resize_array(images, image_size, channels)
    labels = torch.cat([torch.full((len(i),), k, dtype=torch.long) for k, i in enumerate(per_class)])
    order = torch.cat(per_class) if per_class else torch.zeros(0, dtype=torch.long)
    return FewShotSplit(x[order].contiguous(), labels, [str(c) for c in classes])


def load_pickles(root: Path, image_size: int, channels: int) -> FewShotDataset:
    missing = [n for n in PICKLES.values() if not (root / n).is_file()]
    if missing:
        raise UserError(f"Missing {', '.join(missing)} in {root}; {WHERE_TO_GET}.")
    splits = {s: read_pickle_split(root / n, image_size, channels) for s, n in PICKLES.items()}
    check_disjoint({s: v.class_names for s, v in splits.items()}, {s: str(root / n) for s, n in PICKLES.items()})
    return finish_dataset(splits, [], "mini_imagenet")


def load(root: Path, image_size: int = 84, channels: int = 3, format: str = "auto",
         cache_dir: str = "~/.cache/metafsl", download: bool = False, cache_check: str = "stat") -> FewShotDataset:
    root = Path(root)
    check_shape(image_size, channels)
    if not root.exists():
        raise UserError(f"Folder {root} does not exist; point dataset.root at the miniImageNet files "
                        f"(the CSV release or {', '.join(PICKLES.values())}).")
    fmt = detect_format(root, format)  # download=true changes nothing: there is no checksummed source
    if fmt == "csv":
        rows = read_csvs(root)  # checked on every load: a changed CSV is also a changed source
        check_images_dir(root / "images")
        sources = [root / n for n in CSV_FILES.values()] + [root / "images" / f for r in rows.values() for f, _ in r]
        build = functools.partial(load_csv, root, image_size, channels, rows)
    else:
        sources = [root / n for n in PICKLES.values()]
        build = functools.partial(load_pickles, root, image_size, channels)
    options = {"format": fmt, "size": image_size, "channels": channels, "src": str(root.resolve())}
    return cached_dataset(CacheSpec("mini_imagenet", root, cache_dir, options, sources, VERSION, cache_check), build)
