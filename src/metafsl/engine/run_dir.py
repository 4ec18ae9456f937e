"""The run directory is the unit of record: config snapshot, metrics, checkpoints, summary.

Everything written here is written atomically (a temp file renamed into place); a write that
fails is one sentence and leaves no temp file.  Default run dirs are unique (a timestamp to the
microsecond plus a random suffix, created with exclusive creation), and a training holds an
exclusive lock on its run dir (``.lock``, released on exit, stale after a crash).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import secrets
import shutil
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
        os.fchmod(fd, _mode_for(path))  # mkstemp makes 0600: give the file the mode open() would
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _mode_for(path: Path) -> int:
    """The mode of the file being replaced, or what a new file gets under the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0o022)  # read it (there is no other way), then put it back
        os.umask(umask)
        return 0o666 & ~umask


def write_text(path: Path, text: str, what: str = "",
               failed: Optional[Callable[[OSError], UserError]] = None) -> None:
    """Atomic text write; an OS error (read-only dir, full disk) is a UserError (``failed(error)``
    when given), no temp file left."""
    try:
        replace_atomically(path, lambda f: f.write(text))
    except IsADirectoryError:
        raise UserError(f"Cannot write {what or path}: {path} is a directory.") from None
    except OSError as exc:
        if failed is not None:
            raise failed(exc) from None
        raise UserError(f"Cannot write {what or path} ({_reason(exc)}); "
                        "the result above was not saved there.") from None


def write_json(path: Path, data: Dict[str, Any],
               failed: Optional[Callable[[OSError], UserError]] = None) -> None:
    """Atomic JSON write."""
    write_text(path, json.dumps(data, indent=2) + "\n", failed=failed)


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def write_failed(run_dir: Path, what: str, exc: OSError, kept: str = "") -> UserError:
    """The sentence for a write into a training's run dir that failed (a full disk, a read-only
    filesystem): what was not written (``kept``: what is intact), and how the run continues."""
    kept = f" and {kept}" if kept else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"The disk of the run dir {run_dir} is full ({_reason(exc)}): {what} was not written"
                         f"{kept}; free some space, then continue with resume=true hydra.run.dir={run_dir}.")
    return UserError(f"Cannot write {what} in the run dir {run_dir} ({_reason(exc)}){kept}; once it is "
                     f"writable, continue with resume=true hydra.run.dir={run_dir}.")


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


def made_for_this_run(path: Path) -> bool:
    """Whether ``path`` does not exist yet, or is a default (stamped) run dir that is still empty:
    a run refused before any work may then remove it."""
    path = Path(path)
    if not path.exists():
        return True
    return bool(_STAMP.fullmatch(path.name)) and path.is_dir() and not any(path.iterdir())


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
        self._discard = self._remove_dir = False
        self._new: List[Path] = []

    def __enter__(self) -> "RunLock":
        from filelock import Timeout

        #: what a training refused before any work leaves behind unless ``discard`` removes it
        self._new = [p for p in (self.run_dir / SNAPSHOT, self.run_dir / LOCK) if not p.exists()]
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

    def discard(self, remove_dir: bool) -> None:
        """On exit, remove what a training refused before any work wrote here and was not here
        before (its ``.hydra/`` snapshot, this lock), then, with ``remove_dir`` (a dir made for this
        training), the dir itself if nothing else is in it.  Nothing that was there is touched."""
        self._discard, self._remove_dir = True, remove_dir

    def __exit__(self, *exc) -> None:
        if self._discard:
            for path in self._new:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        self._lock.release()
        if self._discard and self._remove_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only ever succeeds on an empty directory


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
        """Append one line; a failed append (a full disk) leaves no partial line and is a UserError."""
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            raise write_failed(self.path.parent, f"a row of {self.path.name}", exc) from None

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
    """The run's ``.hydra/config.yaml`` as a dict (None when absent, unreadable or not a mapping)."""
    path = Path(run_dir) / SNAPSHOT / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        conf = OmegaConf.load(path)
    except Exception:  # a hand-edited snapshot: nothing to compare against
        return None
    try:
        data = OmegaConf.to_container(conf, resolve=True)
    except Exception:  # an interpolation that no longer resolves here: compare the raw values
        data = OmegaConf.to_container(conf, resolve=False)
    return data if isinstance(data, dict) else None  # a YAML list or scalar is no run config
