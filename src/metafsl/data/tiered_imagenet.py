"""tieredImageNet (Ren et al. 2018, "Meta-Learning for Semi-Supervised Few-Shot Classification").

608 ImageNet classes grouped into 34 high-level categories; the split is by category:
351 / 97 / 160 classes for train / val / test.  Read from learn2learn's pickle format
(the files of Ren et al.'s release):

    <root>/tiered-imagenet/{train,val,test}_images_png.pkl   # list of PNG-encoded 84x84 images
    <root>/tiered-imagenet/{train,val,test}_labels.pkl       # dict: label_specific (class id per image),
                                                             # label_specific_str, label_general, ...

(``<root>`` may also be the ``tiered-imagenet`` folder itself.)  The high-level category of
each class (``label_general``) is kept as its group, so ``episode.within_alphabet=true`` draws
all classes of a task from one category.  Unreadable PNGs are reported and skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from metafsl.data.assemble import check_shape, finish_dataset
from metafsl.data.base import FewShotDataset, FewShotSplit
from metafsl.data.cache import CacheSpec, cached_dataset
from metafsl.data.checks import check_disjoint
from metafsl.data.images import decode
from metafsl.data.pickles import load_pickle
from metafsl.errors import UserError

VERSION = 2  # of this loader: a change rebuilds cached datasets
SPLITS = {"train": "train", "val": "val", "test": "test"}
FILES = [f"{s}_{kind}.pkl" for s in SPLITS.values() for kind in ("images_png", "labels")]
WHERE_TO_GET = ("learn2learn publishes them at https://zenodo.org/record/7978538 as tiered-imagenet-<file> "
                "(no checksum is published, so metafsl does not fetch them itself)")


def locate(root: Path) -> Path:
    for folder in (root / "tiered-imagenet", root):
        if (folder / FILES[0]).is_file():
            missing = [f for f in FILES if not (folder / f).is_file()]
            if missing:
                raise UserError(f"Missing {', '.join(missing)} in {folder}; {WHERE_TO_GET}.")
            return folder
    raise UserError(f"No tieredImageNet files in {root}: place {', '.join(FILES)} in "
                    f"{root / 'tiered-imagenet'}; {WHERE_TO_GET}.")


def _labels(path: Path, n: Optional[int] = None) -> Tuple[np.ndarray, List[str], np.ndarray, List[str]]:
    """(class id per image, class names, category id per image, category names); ``n``: the
    number of images the labels must cover.  Without names, classes are '<split>-classNNN'."""
    data = load_pickle(path, str(path))
    if not isinstance(data, dict) or "label_specific" not in data:
        raise UserError(f"{path} is not a tieredImageNet labels file (a dict with label_specific).")
    specific = np.asarray(data["label_specific"], dtype=np.int64).reshape(-1)
    if n is not None and len(specific) != n:
        raise UserError(f"{path} labels {len(specific)} images but its images file holds {n}.")
    k = int(specific.max()) + 1 if len(specific) else 0
    split = path.name.split("_")[0]
    names = [str(x) for x in data.get("label_specific_str", [])] or [f"{split}-class{i:03d}" for i in range(k)]
    general = np.asarray(data.get("label_general", np.zeros(len(specific))), dtype=np.int64).reshape(-1)
    gnames = [str(x) for x in data.get("label_general_str", [])]
    return specific, names, general, gnames


def read_split(folder: Path, split: str, image_size: int, channels: int) -> Tuple[FewShotSplit, List[str]]:
    images_path = folder / f"{split}_images_png.pkl"
    encoded = load_pickle(images_path, str(images_path))
    if not isinstance(encoded, (list, tuple, np.ndarray)):
        raise UserError(f"{images_path} is not a list of PNG-encoded images.")
    specific, names, general, gnames = _labels(folder / f"{split}_labels.pkl", len(encoded))
    arrays, kept, bad = [], [], []
    for i, item in enumerate(encoded):
        try:
            data = item if isinstance(item, bytes) else np.asarray(item, dtype=np.uint8).tobytes()
            arrays.append(decode(data, image_size, channels))
            kept.append(i)
        except Exception:
            bad.append(f"{images_path}[{i}]")
    labels = torch.as_tensor(specific[kept], dtype=torch.long)
    images = (torch.from_numpy(np.stack(arrays)) if arrays
              else torch.zeros(0, channels, image_size, image_size, dtype=torch.uint8))
    # classes used by this split, renumbered 0..K-1 in id order
    used = sorted(set(specific.tolist()))
    remap = torch.full((max(used) + 1 if used else 1,), -1, dtype=torch.long)
    remap[torch.tensor(used, dtype=torch.long)] = torch.arange(len(used))
    labels = remap[labels]
    order = torch.argsort(labels, stable=True)
    first = {}
    for idx, c in enumerate(specific.tolist()):
        first.setdefault(c, idx)
    cls_general = [int(general[first[c]]) for c in used]
    gids = sorted(set(cls_general))
    groups = [gids.index(g) for g in cls_general]
    group_names = [gnames[g] if g < len(gnames) else f"category{g:02d}" for g in gids]
    class_names = [names[c] if c < len(names) else f"{split}-class{c:03d}" for c in used]
    split_obj = FewShotSplit(images[order].contiguous(), labels[order], class_names,
                             torch.tensor(groups, dtype=torch.long), group_names)
    return split_obj, bad


def check_classes(folder: Path) -> None:
    """No class in two splits (read from the labels files, before any image is decoded)."""
    used, where = {}, {}
    for split in SPLITS.values():
        path = folder / f"{split}_labels.pkl"
        specific, names, _, _ = _labels(path)
        used[split] = [names[c] if c < len(names) else f"{split}-class{c:03d}" for c in sorted(set(specific.tolist()))]
        where[split] = str(path)
    check_disjoint(used, where)


def load(root: Path, image_size: int = 84, channels: int = 3, cache_dir: str = "~/.cache/metafsl",
         cache_check: str = "stat") -> FewShotDataset:
    root = Path(root)
    check_shape(image_size, channels)
    folder = locate(root)

    def build():
        check_classes(folder)
        splits, skipped = {}, []
        for split, stem in SPLITS.items():
            splits[split], bad = read_split(folder, stem, image_size, channels)
            skipped += bad
        return finish_dataset(splits, skipped, "tiered_imagenet")

    spec = CacheSpec("tiered_imagenet", folder, cache_dir,
                     {"size": image_size, "channels": channels, "src": str(folder.resolve())},
                     [folder / f for f in FILES], VERSION, cache_check)
    return cached_dataset(spec, build)
