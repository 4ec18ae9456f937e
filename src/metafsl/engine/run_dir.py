"""The run directory is the unit of record: config snapshot, metrics, checkpoints, summary.

Everything written here is written atomically (a temp file renamed into place); a write that
fails is one sentence and leaves no temp file.  Default run dirs are unique (a timestamp to the
microsecond plus a random suffix, created with exclusive creation), and a training holds an
exclusive lock on its run dir (``.lock``, released on exit, stale after a crash).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterable, List, Optional

from metafsl.errors import UserError

LAST = Path("checkpoints/last.pt")
BEST = Path("checkpoints/best.pt")
SUMMARY = "summary.json"
#: a `metafsl test` run's own record, in its run dir
RESULT = "result.json"
METRICS = "metrics.jsonl"
SNAPSHOT = ".hydra"
LOCK = ".lock"


# ----------------------------------------------------------------------------- atomic writes
def replace_atomically(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """``write(file)`` into a temp file beside ``path``, fsync, then rename it over ``path``.  On
    any error the temp file is removed and the error raised again: ``path`` is left as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str, what: str = "") -> None:
    """Atomic text write; an OS error (read-only dir, full disk) is a UserError, no temp file left."""
    try:
        replace_atomically(path, lambda f: f.write(text))
    except IsADirectoryError:
        raise UserError(f"Cannot write {what or path}: {path} is a directory.") from None
    except OSError as exc:
        raise UserError(f"Cannot write {what or path} ({exc.strerror or exc.__class__.__name__}); "
                        "the result above was not saved there.") from None


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """Atomic JSON write."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Dict[str, Any]:
    return json.loads(Path(path).read_text())


def remove_orphan_temp_files(run_dir: Path) -> List[Path]:
    """Remove the temp files of atomic writes a killed process left in ``run_dir`` (and its
    checkpoints/): ``.<name>.<random>.tmp``.  Call only while holding the run dir's lock."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints", Path(run_dir) / ".hydra"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# ----------------------------------------------------------------------------- unique dirs/files
def stamp() -> str:
    """A timestamp to the microsecond plus 4 random hex digits: never shared by two processes."""
    return f"{_dt.datetime.now():%Y-%m-%d_%H-%M-%S-%f}_{secrets.token_hex(2)}"


def unique_dir(parent: Path) -> Path:
    """Create and return a new directory ``<parent>/<stamp>`` (exclusive creation)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = parent / stamp()
        try:
            path.mkdir()
            return path
        except FileExistsError:  # pragma: no cover - 1 in 65536 within the same microsecond
            continue


def unique_file(parent: Path, suffix: str) -> Path:
    """Create (empty, exclusively) and return a new file ``<parent>/<stamp><suffix>``."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = parent / f"{stamp()}{suffix}"
        try:
            with open(path, "x"):
                return path
        except FileExistsError:  # pragma: no cover
            continue


_STAMP = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}_[0-9a-f]{4}")


def discard_if_unused(path: Path) -> None:
    """Remove a default (stamped) run dir that is still empty: a refused command leaves no trace."""
    path = Path(path)
    if _STAMP.fullmatch(path.name):
        try:
            path.rmdir()  # only ever succeeds on an empty directory
        except OSError:
            pass


def hydra_unique_dir(parent: str) -> str:
    """OmegaConf resolver ``${metafsl.unique_dir:<parent>}`` for default run dirs."""
    try:
        return str(unique_dir(Path(parent)))
    except OSError as exc:
        raise UserError(f"Cannot create a run dir under {parent} ({exc.strerror}); "
                        "pass paths.output_dir=<a writable folder>.") from None


# ----------------------------------------------------------------------------- lock
class RunLock:
    """Exclusive lock on a run dir for the lifetime of a training (``filelock``, OS-level: released
    when the process ends, however it ends)."""

    def __init__(self, run_dir: Path):
        from filelock import FileLock

        self.run_dir = Path(run_dir)
        self._lock = FileLock(str(self.run_dir / LOCK), timeout=0)

    def __enter__(self) -> "RunLock":
        from filelock import Timeout

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            raise UserError(f"{self.run_dir} is in use by another metafsl training (it holds "
                            f"{self.run_dir / LOCK}); wait for it to end or choose another run dir.") from None
        except OSError as exc:
            raise UserError(f"Cannot lock the run dir {self.run_dir} ({exc.strerror}); "
                            "is it writable?") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


# ----------------------------------------------------------------------------- config snapshot
def write_snapshot(run_dir: Path, cfg: Any, overrides: Iterable[str], hydra_cfg: Any = None) -> None:
    """``.hydra/config.yaml``, ``overrides.yaml`` (and ``hydra.yaml``), as Hydra would write them;
    written by us, after the checks, so that a refused command leaves an existing run untouched."""
    from omegaconf import OmegaConf

    folder = Path(run_dir) / SNAPSHOT
    write_text(folder / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg)))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    if hydra_cfg is not None:
        write_text(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return any((path / p).exists() for p in (LAST, BEST, SUMMARY, METRICS))


# ----------------------------------------------------------------------------- metrics
class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON record per logged step."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, iteration: int, validated: Optional[int] = None) -> None:
        """Drop records past ``iteration`` (used when a run resumes from a checkpoint), and
        validation records past ``validated`` (the checkpoint's last validation): a run killed
        between writing a validation row and saving the checkpoint that knows of it validates
        again on resume, and must not leave the row twice."""
        if not self.path.exists():
            return
        validated = iteration if validated is None else validated
        keep: List[str] = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            it = record.get("iteration", 0)
            if it <= iteration and not (record.get("split") == "val" and it > validated):
                keep.append(line)
        write_text(self.path, "".join(k + "\n" for k in keep))

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()

    def write(self, record: Dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> List[Dict[str, Any]]:
        if not self.path.exists():
            return []
        out: List[Dict[str, Any]] = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def metrics_log(run_dir: Path) -> MetricsLog:
    return MetricsLog(Path(run_dir) / METRICS)


def find(run_dir: Path, which: str) -> Path:
    """The path of the run's ``best`` or ``last`` checkpoint."""
    if which not in ("best", "last"):
        raise UserError(f"checkpoint must be best or last, not '{which}'.")
    return Path(run_dir) / (BEST if which == "best" else LAST)


def saved_config(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The run's ``.hydra/config.yaml`` as a dict (None when absent or unreadable)."""
    path = Path(run_dir) / SNAPSHOT / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        conf = OmegaConf.load(path)
    except Exception:  # a hand-edited snapshot: nothing to compare against
        return None
    try:
        return OmegaConf.to_container(conf, resolve=True)
    except Exception:  # an interpolation that no longer resolves here: compare the raw values
        return OmegaConf.to_container(conf, resolve=False)
