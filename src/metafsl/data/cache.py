"""On-disk cache of decoded datasets: decode and resize once, start in seconds after."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

from metafsl.data.base import FewShotDataset, FewShotSplit

CACHE_VERSION = 1


def _writable(folder: Path) -> bool:
    """True when we may create files in ``folder``.

    Judged by permission bits, not by trying: running as root, a folder marked read-only
    (shared, curated data) would otherwise still be written to.
    """
    parent = folder if folder.exists() else folder.parent
    try:
        mode = parent.stat().st_mode
    except OSError:
        return False
    if not (mode & stat.S_IWUSR) or not os.access(parent, os.W_OK):
        return False
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return False
    return True


def cache_path(data_root: Path, fallback_dir: str, key: dict) -> Path:
    """Beside the data (``<root>/.metafsl-cache``) when writable, else in ``fallback_dir``."""
    digest = hashlib.sha1(json.dumps({**key, "v": CACHE_VERSION}, sort_keys=True).encode())
    name = f"{key.get('name', 'dataset')}-{digest.hexdigest()[:12]}.pt"
    beside = Path(data_root) / ".metafsl-cache"
    if _writable(beside):
        return beside / name
    folder = Path(os.path.expanduser(fallback_dir))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def pack(ds: FewShotDataset) -> dict:
    return {
        "name": ds.name,
        "mean": ds.mean,
        "std": ds.std,
        "skipped": ds.skipped,
        "ignored": ds.ignored,
        "splits": {
            k: {
                "images": s.images,
                "labels": s.labels,
                "class_names": s.class_names,
                "groups": s.groups,
                "group_names": s.group_names,
            }
            for k, s in ds.splits.items()
        },
    }


def unpack(d: dict) -> FewShotDataset:
    splits = {k: FewShotSplit(**v) for k, v in d["splits"].items()}
    return FewShotDataset(d["name"], splits, d["mean"], d["std"], d.get("skipped", []), d.get("ignored", []))


def cached(path: Optional[Path], build: Callable[[], dict]) -> dict:
    """Load the dict saved at ``path`` if readable; else build it, save atomically, return it.

    Payloads hold only tensors, numbers, strings and lists (safe ``weights_only`` loading).
    """
    if path is not None and path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a stale or truncated cache is rebuilt, never fatal
            pass
    payload = build()
    if path is not None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return payload


def cached_dataset(path: Optional[Path], build: Callable[[], FewShotDataset]) -> FewShotDataset:
    return unpack(cached(path, lambda: pack(build())))
