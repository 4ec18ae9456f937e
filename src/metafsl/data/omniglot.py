"""Omniglot (Lake et al. 2015) from the official release layout.

``<root>/images_background/<Alphabet>/characterNN/*.png`` (and ``images_evaluation``,
``images_background_small1``, ``images_background_small2``), each either extracted or as
the release's ``.zip``.  Images are inverted (ink bright), resized once, and the decoded
sets are cached on disk beside the data (or in ``paths.cache_dir`` when that is read-only).

Splits
- ``vinyals``: Vinyals et al.'s character split as used by Snell et al. (1028 / 172 / 423
  characters); each character rotated by 0/90/180/270 degrees gives 4 classes.
- ``lake``: Lake et al.'s protocol: the background set (30 alphabets, or one of the two
  "minimal" sets) to train, the 20 evaluation alphabets to test; optionally a held-out
  fraction of training characters for validation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from metafsl.data.base import FewShotDataset, channel_stats, from_class_lists
from metafsl.data.cache import CacheSpec, cached
from metafsl.data.checks import check_disjoint
from metafsl.data.download import fetch
from metafsl.data.images import Archive, decode_many, has_images, iter_images, walk
from metafsl.errors import UserError

VERSION = 2  # of this loader: a change rebuilds cached datasets
SETS = ("images_background", "images_evaluation", "images_background_small1", "images_background_small2")
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{}.zip"
# MD5 of the official archives; checked only for files metafsl downloads itself.
MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
SPLIT_FILE = Path(__file__).parent / "splits" / "omniglot_vinyals.txt"


def _locate(root: Path, name: str, download: bool) -> Path:
    for candidate in (root / name, root / f"{name}.zip"):
        if candidate.exists():
            return candidate
    if download:
        return _download(root, name)
    raise UserError(
        f"Omniglot set '{name}' not found under {root} (expected {root / name}/ or {root / name}.zip); "
        f"place the official release's {name}.zip there, or pass dataset.download=true to fetch it."
    )


def _download(root: Path, name: str) -> Path:
    return fetch(URL.format(name), root / f"{name}.zip", MD5.get(name))


def _read_set(path: Path, image_size: int) -> Dict:
    """Decode one set: uint8 images (N, 1, s, s) + alphabet/character of each."""
    archive = Archive(path)
    try:
        names = iter_images(archive.names())
        images, kept, bad = decode_many(archive.read, names, image_size, 1, invert=True)
    finally:
        archive.close()
    if names and not kept:
        raise UserError(f"None of the {len(names)} images in {path} can be read; replace it with the official "
                        f"release's {path.name.removesuffix('.zip')}.zip (or that zip extracted).")
    chars = []
    for i in kept:
        parts = names[i].split("/")
        if len(parts) < 3:
            raise UserError(f"Unexpected file {names[i]} in {path}: expected <Alphabet>/<character>/<file>.png.")
        chars.append(f"{parts[-3]}/{parts[-2]}")
    return {"images": images, "chars": chars, "skipped": [f"{path}:{b}" for b in bad], "ignored": archive.ignored}


def check_has_images(path: Path, name: str, names: Optional[List[str]] = None) -> None:
    """A set's folder (or zip) with no image in it, such as an extraction that left empty
    folders, is one sentence naming it and what it should hold.  ``names``: a folder's files."""
    if names is None:
        archive = Archive(path)
        try:
            names = archive.names()
        finally:
            archive.close()
    if has_images(names):
        return
    zipped = path.parent / f"{name}.zip"
    also = f", or remove it to use {zipped}" if path.is_dir() and zipped.is_file() else ""
    kind, inside = ("Folder", "") if path.is_dir() else ("Archive", f"{name}/")
    raise UserError(f"{kind} {path} holds no images; it should hold Omniglot's {name} set as "
                    f"{inside}<Alphabet>/<character>/<drawing>.png, as in the official {name}.zip{also}.")


def load_sets(root: Path, sets: List[str], image_size: int, cache_dir: str, download: bool,
              cache_check: str = "stat"):
    out = {}
    for name in sets:
        path = _locate(root, name, download)
        names = walk(path)[0] if path.is_dir() else None
        files = [path] if names is None else [path / n for n in names]
        spec = CacheSpec(f"omniglot-{name}", root, cache_dir, {"size": image_size, "src": str(path.resolve())},
                         files, VERSION, cache_check)
        out[name] = cached(spec, lambda p=path, n=name, listed=names: _read_checked_set(p, n, listed, image_size))
    return out


def _read_checked_set(path: Path, name: str, names: Optional[List[str]], image_size: int) -> dict:
    """A set read for its cache: checked for images first (a current cache was built from
    images, and a changed set file or listing is not current, so the check runs then)."""
    check_has_images(path, name, names)
    return _read_set(path, image_size)


def vinyals_split(path: Path = SPLIT_FILE) -> Dict[str, str]:
    """{'Alphabet/characterNN': split} from the packaged split file (each character once)."""
    table: Dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        split, alphabet, ranges = line.split("\t")
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for k in range(int(lo), int(hi or lo) + 1):
                char = f"{alphabet}/character{k:02d}"
                if char in table:
                    raise UserError(f"{path} lists {char} twice ({table[char]} and {split}); each character "
                                    "belongs to one split.")
                table[char] = split
    return table


def _group_characters(decoded: Dict) -> Dict[str, torch.Tensor]:
    chars = decoded["chars"]
    by_char: Dict[str, List[int]] = {}
    for i, c in enumerate(chars):
        by_char.setdefault(c, []).append(i)
    return {c: decoded["images"][torch.tensor(ix)] for c, ix in by_char.items()}


def _make_split(chars: List[Tuple[str, torch.Tensor]], rotations: bool):
    per_class, names, groups = [], [], []
    alphabets = sorted({c.split("/")[0] for c, _ in chars})
    aid = {a: i for i, a in enumerate(alphabets)}
    for c, imgs in chars:
        for k in range(4 if rotations else 1):
            per_class.append(torch.rot90(imgs, k, dims=(2, 3)) if k else imgs)
            names.append(f"{c}/rot{90 * k:03d}")
            groups.append(aid[c.split("/")[0]])
    return from_class_lists(per_class, names, groups, alphabets)


def _vinyals_parts(sets: Dict, root: Path) -> Dict[str, List]:
    table = vinyals_split()
    parts: Dict[str, List] = {"train": [], "val": [], "test": []}
    for s in sets.values():
        for c, imgs in sorted(_group_characters(s).items()):
            if c not in table:
                raise UserError(f"Character {c} in {root} is not in the Vinyals split; is this the official release?")
            parts[table[c]].append((c, imgs))
    return parts


def _lake_parts(sets: Dict, background: str, lake_val_fraction: float, seed: int) -> Dict[str, List]:
    train = sorted(_group_characters(sets[background]).items())
    n_val = int(round(lake_val_fraction * len(train)))
    if n_val >= len(train):
        raise UserError(f"dataset.lake_val_fraction={lake_val_fraction} holds out all {len(train)} characters of "
                        f"{background} for validation; it must leave some to train on (lower it, 0 for none).")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    val_ix = set(perm[:n_val])
    return {
        "train": [t for i, t in enumerate(train) if i not in val_ix],
        "val": [t for i, t in enumerate(train) if i in val_ix],
        "test": sorted(_group_characters(sets["images_evaluation"]).items()),
    }


def check_arguments(split: str = "vinyals", lake_val_fraction: float = 0.1, **_) -> None:
    """The loader's arguments taken together, checked with the config before any work."""
    if split == "lake" and not 0 <= lake_val_fraction < 1:
        raise UserError(f"dataset.lake_val_fraction must be at least 0 and below 1 (got {lake_val_fraction}): "
                        "it is the fraction of the background characters held out for validation.")


def load(root: Path, image_size: int = 28, split: str = "vinyals", background: str = "images_background",
         rotations: bool = True, lake_val_fraction: float = 0.1, cache_dir: str = "~/.cache/metafsl",
         download: bool = False, seed: int = 0, cache_check: str = "stat") -> FewShotDataset:
    root = Path(root)
    check_arguments(split, lake_val_fraction)
    if split == "vinyals":
        sets = load_sets(root, ["images_background", "images_evaluation"], image_size, cache_dir, download,
                         cache_check)
        parts = _vinyals_parts(sets, root)
    elif split == "lake":
        if background not in SETS or background == "images_evaluation":
            raise UserError(f"dataset.background must be one of: {', '.join(s for s in SETS if s != 'images_evaluation')}.")
        sets = load_sets(root, [background, "images_evaluation"], image_size, cache_dir, download, cache_check)
        parts = _lake_parts(sets, background, lake_val_fraction, seed)
    else:
        raise UserError(f"Unknown Omniglot split '{split}'; choose one of: vinyals, lake.")
    splits = {k: _make_split(v, rotations) for k, v in parts.items() if v}
    missing = [k for k in ("train", "test") if k not in splits]
    if missing:
        raise UserError(f"The Omniglot sets under {root} hold no {' and no '.join(missing)} characters of the "
                        f"{split} split; is this the official release?")
    check_disjoint({k: v.class_names for k, v in splits.items()}, source=str(root))
    skipped = [b for s in sets.values() for b in s["skipped"]]
    ignored = [b for s in sets.values() for b in s.get("ignored", [])]
    mean, std = channel_stats(splits["train"].images)
    return FewShotDataset("omniglot", splits, mean, std, skipped, ignored)
