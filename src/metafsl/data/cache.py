"""On-disk cache of decoded datasets: decode and resize once, start in seconds after.

A cache file is named by what it is (dataset, resolved source path, options such as the image
size, how sources are checked) and records what its content depends on: every source file, by
its resolved path, and the version of the loader that built it.  A source file is identified by
its size, modification time, change time and inode (``dataset.cache_check=stat``, the default:
a file written or replaced since changes at least its change time, even when its size and
modification time are restored) or by its size and SHA-256 (``dataset.cache_check=hash``: every
file is read).  When any of these changed the cache is rebuilt, and one line says why.  The
cache is optional: when it cannot be written (read-only folder, full disk) a warning says so and
the data is used as decoded.  Both lines go to this module's logger (the CLI prints them).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from metafsl.data.base import FewShotDataset, FewShotSplit
from metafsl.errors import UserError

log = logging.getLogger(__name__)

CACHE_VERSION = 3
SHOW = 3  # changed files named in the rebuild line
#: dataset.cache_check: how a source file is recognised as unchanged
CHECKS = ("stat", "hash")


@dataclass
class CacheSpec:
    """What a cached payload is (``name`` and ``options``: they name the file) and what its
    content depends on (``files`` and the loader's ``version``)."""

    name: str
    data_root: Path  # the cache goes in <data_root>/.metafsl-cache when writable
    cache_dir: str  # ... else here
    options: Dict[str, Any]
    files: Iterable[Path] = field(default_factory=list)
    version: int = 1
    check: str = "stat"  # dataset.cache_check

    def __post_init__(self) -> None:
        check_mode(self.check)

    def path(self) -> Optional[Path]:
        key = {"name": self.name, **self.options, "check": self.check}
        return cache_path(Path(self.data_root), self.cache_dir, key)

    def content(self) -> Dict[str, Any]:
        return {"cache": CACHE_VERSION, "loader": self.version, "files": file_table(self.files, self.check)}


def check_mode(check: str) -> None:
    if check not in CHECKS:
        raise UserError(f"dataset.cache_check must be one of {', '.join(CHECKS)} (got {check!r}).")


def file_table(paths: Iterable[Path], check: str = "stat") -> Dict[str, List[Any]]:
    """{resolved path: identity} of each file (following links), [-1] when it is missing.

    The identity is [size, mtime, ctime (ns), inode] with ``check='stat'``, [size, SHA-256]
    with ``check='hash'``.  Paths are keyed by their folder's real path, so ``x/../data`` and
    ``data`` (or a link to it) are the same sources."""
    real = functools.lru_cache(maxsize=None)(os.path.realpath)
    table = {}
    for p in paths:
        head, tail = os.path.split(os.fspath(p))
        key = os.path.join(real(head or "."), tail)
        try:
            table[key] = _identity(p, check)
        except OSError:
            table[key] = [-1]
    return dict(sorted(table.items()))


def _identity(path: Path, check: str) -> List[Any]:
    st = os.stat(path)
    if check == "hash":
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return [st.st_size, digest.hexdigest()]
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


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


def cache_path(data_root: Path, fallback_dir: str, key: dict) -> Optional[Path]:
    """Beside the data (``<root>/.metafsl-cache``) when writable, else in ``fallback_dir``;
    None (no cache, with a warning) when neither can be created.  A generated dataset (glyphs),
    whose root is ``fallback_dir`` itself, is cached straight in that folder: the same file
    whether the folder existed before or not."""
    digest = hashlib.sha1(json.dumps({**key, "v": CACHE_VERSION}, sort_keys=True, default=str).encode())
    name = f"{key.get('name', 'dataset')}-{digest.hexdigest()[:12]}.pt"
    beside = Path(data_root) / ".metafsl-cache"
    folder = Path(os.path.expanduser(fallback_dir))
    generated = os.path.realpath(os.path.expanduser(data_root)) == os.path.realpath(folder)
    if not generated and _writable(beside):  # a generated dataset's root is the cache folder: no "beside"
        return beside / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _warn(f"cannot create the dataset cache folder {folder} ({_why(exc)})")
        return None
    return folder / name


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or exc.__class__.__name__


def _warn(problem: str) -> None:
    log.warning(f"{problem}; continuing without the cache (it only saves time).")


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


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _read_meta(path: Path) -> Optional[dict]:
    try:
        return json.loads(_meta_path(path).read_text())
    except (OSError, ValueError):
        return None


def stale_reason(old: Optional[dict], new: Dict[str, Any]) -> str:
    """Why a cache recorded as ``old`` does not hold what ``new`` describes."""
    if old is None:
        return "it has no record of its sources"
    if old.get("cache") != new["cache"] or old.get("loader") != new["loader"]:
        return "metafsl reads this dataset differently since it was built"
    before, now = old.get("files", {}), new["files"]
    changed = [p for p in now if p in before and before[p] != now[p]]
    added = [p for p in now if p not in before]
    removed = [p for p in before if p not in now]
    parts = [f"{len(v)} file(s) {k}" for k, v in (("changed", changed), ("added", added), ("removed", removed)) if v]
    first = (changed + added + removed)[:SHOW]
    return ", ".join(parts) + f": {', '.join(first)}" + (" ..." if len(changed + added + removed) > SHOW else "")


def _load(path: Path, content: Dict[str, Any]) -> Optional[dict]:
    """The payload saved at ``path`` if it records ``content`` (its record travels inside it
    too, so a payload and a record written by two processes at once cannot be mixed up)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign cache is rebuilt, never fatal
        return None
    if not isinstance(saved, dict) or saved.get("content") != content:
        return None
    return saved.get("payload")


def _save(path: Path, payload: dict, content: Dict[str, Any]) -> None:
    """Write the payload, then its record, each atomically; a failure is a warning."""
    tmp = None
    try:
        for target, write in ((path, lambda f: torch.save({"content": content, "payload": payload}, f)),
                              (_meta_path(path), lambda f: f.write(json.dumps(content).encode()))):
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, target)
            tmp = None
    except Exception as exc:  # read-only folder, full disk, quota ...
        _warn(f"cannot write the dataset cache {path} ({_why(exc)})")
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def cached(spec: Optional[CacheSpec], build: Callable[[], dict]) -> dict:
    """The payload cached for ``spec`` if it is current; else build it, save it, return it.

    Payloads hold only tensors, numbers, strings and lists (safe ``weights_only`` loading).
    """
    if spec is None:
        return build()
    path, content = spec.path(), spec.content()
    if path is None:
        return build()
    if path.exists():
        old = _read_meta(path)
        payload = _load(path, content) if old == content else None
        if payload is not None:
            return payload
        reason = stale_reason(old, content) if old != content else "the cache file is unreadable"
        log.info(f"Rebuilding the {spec.name} cache ({reason}).")
    payload = build()
    _save(path, payload, content)
    return payload


def cached_dataset(spec: Optional[CacheSpec], build: Callable[[], FewShotDataset]) -> FewShotDataset:
    return unpack(cached(spec, lambda: pack(build())))
