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

import os
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from metafsl.data.assemble import check_shape, finish_dataset, split_from_files
from metafsl.data.base import FewShotDataset
from metafsl.data.cache import CacheSpec, cached_dataset
from metafsl.data.checks import check_class_split, check_disjoint, check_fractions
from metafsl.data.images import Archive, is_image
from metafsl.errors import UserError

VERSION = 2  # of this loader: a change rebuilds cached datasets
SPLITS = ("train", "val", "test")
LAYOUTS = "<root>/<class>/<image> or <root>/<split>/<class>/<image> with split train, val or test"
Groups = Dict[str, Dict[str, List[str]]]


def scan(names: List[str], look_through: bool = False, root: str = "") -> Tuple[str, Groups, List[str]]:
    """Group image paths into ``{split or '': {class: [paths]}}``; returns (layout, groups, ignored).

    Top folders named train, val, test (any case) mean ``<split>/<class>/<file>``; otherwise
    ``<class>/<file>``; both kinds of top folder at once is refused.  Images outside a class
    folder are returned in ``ignored``.  ``look_through``: a single top folder holding
    everything (a zip of the folder) is skipped.
    """
    rel = {n: n for n in names if is_image(n) and "__MACOSX" not in n}
    while look_through and rel:
        tops = {r.split("/")[0] for r in rel.values()}
        if len(tops) != 1 or split_of(next(iter(tops))) or not all(r.count("/") >= 2 for r in rel.values()):
            break
        rel = {n: r.split("/", 1)[1] for n, r in rel.items()}
    tops = sorted({r.split("/")[0] for r in rel.values() if "/" in r})
    named = {t: split_of(t) for t in tops if split_of(t)}
    if named and len(named) < len(tops):
        others = [t for t in tops if t not in named]
        raise UserError(f"{root or 'The dataset root'} mixes split folders ({', '.join(sorted(named))}) with "
                        f"class folders ({_few(others)}), so its layout is ambiguous; use either {LAYOUTS}.")
    if len(set(named.values())) < len(named):
        raise UserError(f"{root or 'The dataset root'} has two folders for one split ({', '.join(sorted(named))}); "
                        "keep one train, one val and one test folder.")
    depth = 3 if named else 2
    groups: Groups = {s: {} for s in SPLITS} if named else {"": {}}
    stray = []
    for full, r in rel.items():
        parts = r.split("/")
        if len(parts) < depth:
            stray.append(full)
        elif named:
            groups[named[parts[0]]].setdefault(parts[1], []).append(full)
        else:
            groups[""].setdefault(parts[0], []).append(full)
    ignored = [f"{root}/{n} (not in a class folder)" for n in sorted(stray)]
    return ("splits" if named else "classes"), groups, ignored


def split_of(folder: str) -> str:
    """The split a top folder names ('' when it is not train, val or test)."""
    return folder.lower() if folder.lower() in SPLITS else ""


def _few(items: List[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_splits(groups: Groups, root: Path) -> None:
    """A split layout needs train/ and test/ (val/ is optional); no class in two splits."""
    present = [s for s in SPLITS if groups.get(s)]
    missing = [s for s in ("train", "test") if not groups.get(s)]
    if missing:
        has = " and ".join(f"{s}/" for s in present) or "no split folder with images"
        raise UserError(f"{root} has {has} but no {' or '.join(f'{s}/' for s in missing)} with class folders of "
                        f"images; dataset=folder needs {root}/train/<class>/<image> and {root}/test/<class>/<image> "
                        "(val/ is optional), or one folder per class to split them by dataset.train_fraction.")
    check_disjoint({s: groups[s] for s in present}, {s: f"{root}/{s}/" for s in present})


def check_same_files(groups: Groups, root: Path) -> None:
    """One image file (reached through two links) in two classes is a leak, or a duplicate."""
    owner: Dict[str, str] = {}
    for split, classes in groups.items():
        for c, files in classes.items():
            label = f"{split}/{c}" if split else c
            for f in files:
                real = os.path.realpath(root / f)
                first = owner.setdefault(real, label)
                if first != label:
                    raise UserError(f"The image {real} is in both {root}/{first}/ and {root}/{label}/ "
                                    "(through symbolic links); each image must belong to one class of one split.")


def check_arguments(train_fraction: float = 0.6, val_fraction: float = 0.2, **_) -> None:
    """The loader's arguments taken together, checked with the config before any work."""
    check_fractions(train_fraction, val_fraction)


def split_classes(classes: List[str], train_fraction: float, val_fraction: float, seed: int,
                  root: str = "the dataset root") -> Dict[str, List[str]]:
    """Seeded class split: round(train_fraction * K) train classes, round(val_fraction * K) val, rest test
    (no val split when val_fraction is 0); a split left without classes is one sentence."""
    k = len(classes)
    sizes = check_class_split(k, train_fraction, val_fraction, f"The {k} class folder(s) in {root} give",
                              "add class folders (the fewest that works with these fractions is {fewest}) "
                              "or change the fractions")
    n_train, n_val = sizes["train"], sizes["val"]
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed)).tolist()
    pick = [classes[i] for i in perm]
    return {"train": sorted(pick[:n_train]), "val": sorted(pick[n_train:n_train + n_val]),
            "test": sorted(pick[n_train + n_val:])}


def load(root: Path, image_size: int = 84, channels: int = 3, train_fraction: float = 0.6,
         val_fraction: float = 0.2, seed: int = 0, cache_dir: str = "~/.cache/metafsl",
         cache_check: str = "stat") -> FewShotDataset:
    root = Path(root)
    check_shape(image_size, channels)
    check_arguments(train_fraction, val_fraction)
    if not root.exists():
        raise UserError(f"Folder {root} does not exist; dataset=folder needs dataset.root=<dir> with "
                        "<dir>/<class>/<image> or <dir>/{train,val,test}/<class>/<image>.")
    if root.is_file() and root.suffix != ".zip":
        raise UserError(f"{root} is a file; dataset.root must be a folder or a .zip of one.")
    archive = Archive(root)
    try:
        names = archive.names()
        layout, groups, ignored = scan(names, look_through=archive.is_zip, root=str(root))
        parts = _parts(layout, groups, root, train_fraction, val_fraction, seed)
        if not archive.is_zip:
            check_same_files(parts, root)
        files = [root] if archive.is_zip else [root / n for n in names if is_image(n)]
        options = {"size": image_size, "channels": channels, "src": str(root.resolve()), "layout": layout,
                   "split": [train_fraction, val_fraction, seed]}
        spec = CacheSpec("folder", root if root.is_dir() else root.parent, cache_dir, options, files, VERSION,
                         cache_check)
        ds = cached_dataset(spec, lambda: _decode(archive, parts, image_size, channels, root))
    finally:
        archive.close()
    ds.ignored = archive.ignored + ignored  # as found now, whether decoded now or cached
    return ds


def _decode(archive: Archive, parts: Groups, image_size: int, channels: int, root: Path) -> FewShotDataset:
    splits, skipped = {}, []
    for split in SPLITS:
        classes = sorted(parts.get(split, {}))
        rows = [(f, c) for c in classes for f in sorted(parts[split][c])]
        splits[split], bad = split_from_files(archive.read, rows, classes, image_size, channels, str(root))
        skipped += bad
    return finish_dataset(splits, skipped, "folder")


def _parts(layout: str, groups: Groups, root: Path, train_fraction: float, val_fraction: float,
           seed: int) -> Groups:
    if layout == "splits":
        check_splits(groups, root)
        return groups
    by_class = groups[""]
    if not by_class:
        raise UserError(f"No images in class folders under {root}; expected {LAYOUTS}.")
    table = split_classes(sorted(by_class), train_fraction, val_fraction, seed, str(root))
    return {s: {c: by_class[c] for c in cs} for s, cs in table.items()}
