"""The user's own images: ``dataset=folder dataset.root=<dir>``.

Two layouts (``<dir>`` may also be a ``.zip`` of either):

- ``<dir>/<class>/*.{png,jpg,...}``: classes are split into train / val / test by a seeded
  permutation with ``dataset.train_fraction`` and ``dataset.val_fraction`` (the rest is test);
  classes never overlap between splits, as few-shot evaluation requires;
- ``<dir>/{train,val,test}/<class>/*``: the given split is used as is (val is optional).

Images are converted to ``dataset.channels`` (1 or 3) and resized to ``dataset.image_size``;
unreadable files are reported by path and skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import torch

from metafsl.data.assemble import check_shape, fingerprint, finish_dataset, split_from_files
from metafsl.data.base import FewShotDataset
from metafsl.data.cache import cache_path, cached_dataset
from metafsl.data.images import Archive, is_image
from metafsl.errors import UserError

SPLITS = ("train", "val", "test")


def scan(names: List[str], look_through: bool = False) -> Tuple[str, Dict[str, Dict[str, List[str]]]]:
    """Group image paths into ``{split or '': {class: [paths]}}``; returns (layout, groups).

    With train/ and test/ top folders, ``<split>/<class>/<file>``; otherwise ``<class>/<file>``.
    ``look_through``: a single top folder holding everything (a zip of the folder) is skipped.
    """
    names = [n for n in names if is_image(n) and "__MACOSX" not in n]
    rel = {n: n for n in names}
    while look_through and rel:
        tops = {r.split("/")[0] for r in rel.values()}
        if len(tops) != 1 or tops & set(SPLITS) or not all(r.count("/") >= 2 for r in rel.values()):
            break
        rel = {n: r.split("/", 1)[1] for n, r in rel.items()}
    tops = {r.split("/")[0] for r in rel.values()}
    if {"train", "test"} <= tops:
        groups: Dict[str, Dict[str, List[str]]] = {s: {} for s in SPLITS}
        for full, r in rel.items():
            parts = r.split("/")
            if parts[0] in SPLITS and len(parts) >= 3:
                groups[parts[0]].setdefault(parts[1], []).append(full)
        return "splits", groups
    classes: Dict[str, List[str]] = {}
    for full, r in rel.items():
        parts = r.split("/")
        if len(parts) >= 2:
            classes.setdefault(parts[0], []).append(full)
    return "classes", {"": classes}


def split_classes(classes: List[str], train_fraction: float, val_fraction: float, seed: int) -> Dict[str, List[str]]:
    """Seeded class split: round(train_fraction * K) train classes, round(val_fraction * K) val, rest test."""
    if not (0 < train_fraction < 1 and 0 <= val_fraction < 1 and train_fraction + val_fraction < 1):
        raise UserError(f"dataset.train_fraction ({train_fraction}) and dataset.val_fraction ({val_fraction}) "
                        "must be fractions that leave some classes for test.")
    k = len(classes)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = max(1, round(train_fraction * k))
    n_val = round(val_fraction * k)
    n_val = max(0, min(n_val, k - n_train - 1))
    if k - n_train - n_val < 1 or n_train < 1:
        raise UserError(f"{k} class folders are too few to split into train and test classes.")
    pick = [classes[i] for i in perm]
    return {"train": sorted(pick[:n_train]), "val": sorted(pick[n_train:n_train + n_val]),
            "test": sorted(pick[n_train + n_val:])}


def load(root: Path, image_size: int = 84, channels: int = 3, train_fraction: float = 0.6,
         val_fraction: float = 0.2, seed: int = 0, cache_dir: str = "~/.cache/metafsl") -> FewShotDataset:
    root = Path(root)
    check_shape(image_size, channels)
    if not root.exists():
        raise UserError(f"Folder {root} does not exist; dataset=folder needs dataset.root=<dir> with "
                        "<dir>/<class>/<image> or <dir>/{train,val,test}/<class>/<image>.")
    if root.is_file() and root.suffix != ".zip":
        raise UserError(f"{root} is a file; dataset.root must be a folder or a .zip of one.")
    archive = Archive(root)
    names = archive.names()
    layout, groups = scan(names, look_through=archive.is_zip)
    if layout == "classes":
        by_class = groups[""]
        if not by_class:
            raise UserError(f"No images in class folders under {root}; expected <dir>/<class>/<image> "
                            "or <dir>/{train,val,test}/<class>/<image>.")
        table = split_classes(sorted(by_class), train_fraction, val_fraction, seed)
        parts = {s: {c: by_class[c] for c in cs} for s, cs in table.items()}
    else:
        parts = groups
    stat = [root] if archive.is_zip else [root / n for n in names if is_image(n)]

    def build():
        splits, skipped = {}, []
        try:
            for split in SPLITS:
                classes = sorted(parts.get(split, {}))
                rows = [(f, c) for c in classes for f in sorted(parts[split][c])]
                splits[split], bad = split_from_files(archive.read, rows, classes, image_size, channels, str(root))
                skipped += bad
        finally:
            archive.close()
        return finish_dataset(splits, skipped, "folder")

    key = {"name": "folder", "size": image_size, "channels": channels, "src": str(root.resolve()),
           "layout": layout, "split": [train_fraction, val_fraction, seed], "files": fingerprint(stat)}
    try:
        return cached_dataset(cache_path(root if root.is_dir() else root.parent, cache_dir, key), build)
    finally:
        archive.close()
