"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018), built from CIFAR-100.

Both are re-splits of the 100 CIFAR-100 classes (train and test images together, 600 per
class, 32x32 RGB), read from the python release of CIFAR-100:

    <root>/cifar-100-python.tar.gz        (as published), or
    <root>/cifar-100-python/{train,test,meta}   (extracted)

- ``cifarfs``: 64 / 16 / 20 fine classes chosen at random (``splits/cifarfs.json``);
- ``fc100``: split by superclass, 12 / 4 / 4 superclasses = 60 / 20 / 20 fine classes
  (``splits/fc100.json``), so test classes are semantically far from training ones; the
  superclass of each class is its group (``episode.within_alphabet=true`` works per superclass).

``dataset.download=true`` fetches the archive from the CIFAR page and checks its MD5.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from metafsl.data.assemble import check_shape, resize_array
from metafsl.data.base import FewShotDataset, FewShotSplit, channel_stats
from metafsl.data.cache import CacheSpec, cached_dataset
from metafsl.data.checks import check_split_spec
from metafsl.data.download import fetch
from metafsl.data.pickles import load_pickle
from metafsl.errors import UserError

VERSION = 2  # of this loader: a change rebuilds cached datasets
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
PARTS = ("train", "test", "meta")
SPLIT_DIR = Path(__file__).parent / "splits"


def locate(root: Path, download: bool) -> Path:
    folder, archive = root / FOLDER, root / ARCHIVE
    if folder.is_dir():
        missing = [p for p in PARTS if not (folder / p).is_file()]
        if missing:
            raise UserError(f"Missing {', '.join(missing)} in {folder}; it should hold CIFAR-100's train, test and meta files.")
        return folder
    if archive.is_file():
        return archive
    if download:
        return fetch(URL, archive, MD5)
    raise UserError(f"CIFAR-100 not found under {root}: place {ARCHIVE} (from {URL}) or its extracted "
                    f"{FOLDER}/ folder there, or pass dataset.download=true.")


def read_cifar100(source: Path) -> Dict[str, Any]:
    """{images: uint8 (60000, 32, 32, 3), fine, coarse: int arrays, fine_names, coarse_names}."""
    if source.is_dir():
        parts = {p: load_pickle(source / p, str(source / p)) for p in PARTS}
    else:
        parts = {}
        try:
            with tarfile.open(source, "r:*") as tar:
                for p in PARTS:
                    member = tar.extractfile(f"{FOLDER}/{p}")
                    if member is None:
                        raise KeyError(p)
                    parts[p] = load_pickle(member.read(), f"{source}:{FOLDER}/{p}")
        except (tarfile.TarError, KeyError, EOFError, OSError) as exc:
            raise UserError(f"Could not read {source} as the CIFAR-100 python archive ({exc.__class__.__name__}); "
                            f"it should hold {FOLDER}/train, test and meta.") from None
    try:
        data = np.concatenate([np.asarray(parts[p]["data"], dtype=np.uint8) for p in ("train", "test")])
        fine = np.concatenate([np.asarray(parts[p]["fine_labels"]) for p in ("train", "test")])
        coarse = np.concatenate([np.asarray(parts[p]["coarse_labels"]) for p in ("train", "test")])
        fine_names = list(parts["meta"]["fine_label_names"])
        coarse_names = list(parts["meta"]["coarse_label_names"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{source} does not hold CIFAR-100 python batches (missing {exc}).") from None
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"CIFAR-100 data in {source} has shape {data.shape}, not (N, 3072).")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return {"images": images, "fine": fine, "coarse": coarse, "fine_names": fine_names, "coarse_names": coarse_names}


def split_table(variant: str, data: Dict[str, Any]) -> Dict[str, List[int]]:
    """{split: [fine class ids]} for cifarfs (listed fine classes) or fc100 (listed superclasses)."""
    spec = json.loads((SPLIT_DIR / f"{variant}.json").read_text())
    check_split_spec(spec, SPLIT_DIR / f"{variant}.json")
    names = data["coarse_names"] if variant == "fc100" else data["fine_names"]
    index = {n: i for i, n in enumerate(names)}
    table = {}
    for split in ("train", "val", "test"):
        unknown = [n for n in spec[split] if n not in index]
        if unknown:
            raise UserError(f"The {variant} split names {', '.join(unknown)}, which CIFAR-100's meta file does not list.")
        ids = [index[n] for n in spec[split]]
        if variant == "fc100":
            pairs = {(int(c), int(f)) for f, c in zip(data["fine"], data["coarse"], strict=True) if int(c) in ids}
            table[split] = [f for _, f in sorted(pairs, key=lambda cf: (ids.index(cf[0]), cf[1]))]
        else:
            table[split] = ids
    return table


def build(variant: str, source: Path, image_size: int, channels: int) -> FewShotDataset:
    data = read_cifar100(source)
    table = split_table(variant, data)
    by_class = {f: np.flatnonzero(data["fine"] == f) for f in range(len(data["fine_names"]))}
    images = resize_array(data["images"], image_size, channels)
    superclass = {int(f): int(c) for f, c in zip(data["fine"], data["coarse"], strict=True)}
    splits = {}
    for split, fine_ids in table.items():
        idx = [torch.as_tensor(by_class[f], dtype=torch.long) for f in fine_ids]
        labels = torch.cat([torch.full((len(i),), k, dtype=torch.long) for k, i in enumerate(idx)])
        coarse = sorted({superclass[f] for f in fine_ids})
        groups = torch.tensor([coarse.index(superclass[f]) for f in fine_ids], dtype=torch.long)
        splits[split] = FewShotSplit(images[torch.cat(idx)].contiguous(), labels,
                                     [data["fine_names"][f] for f in fine_ids], groups,
                                     [data["coarse_names"][c] for c in coarse])
    mean, std = channel_stats(splits["train"].images)
    return FewShotDataset(variant, splits, mean, std, [])


def load(variant: str, root: Path, image_size: int = 32, channels: int = 3, cache_dir: str = "~/.cache/metafsl",
         download: bool = False, cache_check: str = "stat") -> FewShotDataset:
    if variant not in ("cifarfs", "fc100"):
        raise UserError(f"Unknown CIFAR-100 split '{variant}'; choose one of: cifarfs, fc100.")
    root = Path(root)
    check_shape(image_size, channels)
    source = locate(root, download)
    files = [source / p for p in PARTS] if source.is_dir() else [source]
    spec = CacheSpec(variant, root, cache_dir, {"size": image_size, "channels": channels, "src": str(source.resolve())},
                     files, VERSION, cache_check)
    return cached_dataset(spec, lambda: build(variant, source, image_size, channels))


def cifarfs(root: Path, image_size: int = 32, channels: int = 3, cache_dir: str = "~/.cache/metafsl",
            download: bool = False, cache_check: str = "stat") -> FewShotDataset:
    """CIFAR-FS (Bertinetto et al. 2019): 64/16/20 CIFAR-100 classes."""
    return load("cifarfs", root, image_size, channels, cache_dir, download, cache_check)


def fc100(root: Path, image_size: int = 32, channels: int = 3, cache_dir: str = "~/.cache/metafsl",
          download: bool = False, cache_check: str = "stat") -> FewShotDataset:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 60/20/20 classes."""
    return load("fc100", root, image_size, channels, cache_dir, download, cache_check)
