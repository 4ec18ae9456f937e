"""``summary.json``, a run's record, typed: the one place that reads and writes it.

Versioned and backward compatible: files written before the version field existed read as
version 1; keys this version does not know are kept on rewrite.  ``tests`` is the history of
test records (``metafsl test`` calls, and a training-time test superseded by a continued run):
records are only ever appended.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from metafsl.engine.run_dir import SUMMARY, write_json
from metafsl.errors import UserError

VERSION = 2
SUMMARY_LOCK = ".summary.lock"


@dataclass
class RunSummary:
    algo: str = ""
    dataset: str = ""
    backbone: str = ""
    episode: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    name: str = ""
    published: Dict[str, Any] = field(default_factory=dict)
    #: iterations, seconds, planned_iterations
    train: Optional[Dict[str, Any]] = None
    #: best_acc, best_iteration
    val: Optional[Dict[str, Any]] = None
    #: the training-time test of the best (or, without validation, last) checkpoint
    test: Optional[Dict[str, Any]] = None
    untrained: Optional[Dict[str, Any]] = None
    #: what the data loader skipped or did not use (metafsl.data.report.DataReport)
    data: Optional[Dict[str, Any]] = None
    #: every later test record, oldest first; never dropped
    tests: List[Dict[str, Any]] = field(default_factory=list)
    budget: float = 1.0
    #: reproduce rows that test another row's model: that row's label
    trained_by: Optional[str] = None
    #: CPU threads torch used, and the code that produced the run (git commit or package version)
    threads: Optional[int] = None
    code_version: Optional[str] = None
    version: int = VERSION
    #: keys of a newer (or older) format, kept as they are
    extra: Dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "RunSummary":
        return cls(algo=cfg["algo"]["name"], dataset=cfg["dataset"]["name"],
                   backbone=backbone_label(cfg["backbone"]), episode=dict(cfg["episode"]),
                   seed=cfg.get("seed", 0), name=cfg.get("name") or "",
                   published=dict(cfg.get("published") or {}), budget=float(cfg.get("budget", 1.0)),
                   threads=_threads(), code_version=code_version())

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RunSummary":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        args = {k: v for k, v in data.items() if k in known and v is not None}
        args["version"] = int(data.get("version", 1))
        return cls(**args, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> Dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data = {k: v for k, v in data.items() if v is not None}
        if self.budget == 1.0:  # as before: only an approximate (budget) run records its budget
            data.pop("budget")
        data["version"] = VERSION
        return {**self.extra, **data}

    # ------------------------------------------------------------------ files
    @classmethod
    def read(cls, run_dir: Path) -> "RunSummary":
        path = Path(run_dir) / SUMMARY
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path} does not exist: the run has not finished.") from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is unreadable or corrupt ({exc.__class__.__name__}).") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a metafsl summary.")
        problem = type_problem(data)
        if problem:
            raise UserError(f"{path} has a field of the wrong type: {problem}.")
        return cls.from_dict(data)

    @classmethod
    def read_or_none(cls, run_dir: Path) -> Optional["RunSummary"]:
        return cls.read(run_dir) if (Path(run_dir) / SUMMARY).is_file() else None

    def write(self, run_dir: Path, failed: Optional[Callable[[OSError], UserError]] = None) -> Path:
        """Write summary.json atomically; a failed write is ``failed(error)`` (default: one sentence)."""
        path = Path(run_dir) / SUMMARY
        write_json(path, self.to_dict(), failed=failed)
        return path

    # ------------------------------------------------------------------ records
    def add_test(self, record: Dict[str, Any]) -> None:
        self.tests.append(dict(record))

    def continue_from(self, previous: "RunSummary") -> None:
        """A continued run keeps every earlier record: the tests, and its superseded final test."""
        self.tests = list(previous.tests)
        if previous.test:
            self.add_test({**previous.test, "superseded_at_iteration": (self.train or {}).get("iterations")})
        if self.untrained is None:
            self.untrained = previous.untrained

    @staticmethod
    @contextlib.contextmanager
    def locked(run_dir: Path) -> Iterator[None]:
        """Serialise read-modify-write of a run's summary.json between processes (`metafsl test`
        twice at once, a test during a continued training)."""
        from filelock import FileLock, Timeout

        lock: Optional[FileLock] = FileLock(str(Path(run_dir) / SUMMARY_LOCK), timeout=120)
        try:
            lock.acquire()
        except Timeout:
            raise UserError(f"{Path(run_dir) / SUMMARY} stayed locked for 2 minutes; "
                            "is another metafsl command stuck on it?") from None
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOENT):
                raise
            lock = None  # a read-only run dir: the write that follows says so in one sentence
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    @classmethod
    def append_test(cls, run_dir: Path, record: Dict[str, Any], default: "RunSummary") -> "RunSummary":
        """Add ``record`` to the run's summary.json (``default`` when it has none yet)."""
        with cls.locked(run_dir):
            summary = cls.read_or_none(run_dir) or default
            summary.add_test(record)
            summary.write(run_dir)
        return summary

    @property
    def best_acc(self) -> Optional[float]:
        return (self.val or {}).get("best_acc")

    @property
    def objective(self) -> float:
        """What sweepers maximise: validation accuracy, else test accuracy."""
        best = self.best_acc
        return float(best if best is not None else (self.test or {}).get("acc", 0.0))


#: the fields of summary.json that are records, and the numbers in them
#: a test's macro precision, recall and F1 (percent) and their CIs
_MACRO = tuple(f"macro_{m}{ci}" for m in ("precision", "recall", "f1") for ci in ("", "_ci95"))
_NUMBERS = {"train": ("iterations", "seconds", "planned_iterations"), "val": ("best_acc", "best_iteration"),
            "test": ("acc", "ci95", "seconds", "iteration", "episodes", *_MACRO), "untrained": ("acc", "ci95"),
            "published": ("acc", "ci95")}
_TEXTS = ("algo", "dataset", "backbone", "name", "trained_by", "code_version")


def inference_label(record: Optional[Dict[str, Any]]) -> str:
    """How a test record's queries were classified, for every table: "inductive" (also records
    written before transductive tests existed), e.g. "transductive tim (75 queries at once)", or
    "query-batch norm" for learners whose batch norm normalises the episode's queries together
    (the MAML family, as Finn et al.'s code: the queries see each other through the statistics)."""
    rec = record or {}
    extra = "".join(f" + {t}" for t in _test_time(rec))
    if rec.get("inference") != "transductive":
        return {"transductive": "transductive batch norm", "batch": "query-batch norm"}.get(
            rec.get("bn"), "inductive") + extra
    return f"transductive {rec.get('transductive', '?')} ({rec.get('query_batch', '?')} queries at once)" + extra


def _test_time(rec: Dict[str, Any]) -> List[str]:
    """The test-time adaptations of a record besides its rule (``eval.bn``, ``eval.finetune_*``)."""
    out = []
    if rec.get("inference") == "transductive" and rec.get("bn") == "transductive":
        out.append("transductive batch norm")
    if isinstance(rec.get("finetune"), dict):
        out.append(f"fine-tuned {rec['finetune'].get('steps', '?')} steps")
    return out


#: the keys of a test record that say how its queries were classified (``inference_label``)
INFERENCE_KEYS = ("inference", "transductive", "query_batch", "bn", "finetune")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true or false"}.get(
        type(value), type(value).__name__)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mapping(value: Any) -> bool:
    return isinstance(value, dict)


def _overrides(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(o, str) for o in value)


def _wrong(record: Any, fields, test, what: str, prefix: str = "") -> Optional[str]:
    """``'<prefix><field>' is <kind>, not <what>`` for the first field (present, not null) failing ``test``."""
    for key in fields if isinstance(record, dict) else ():
        value = record.get(key)
        if value is not None and not test(value):
            return f"'{prefix}{key}' is {_kind(value)}, not {what}"
    return None


def type_problem(data: Dict[str, Any]) -> Optional[str]:
    """The first field of a summary.json whose value has the wrong type (None if all are right), e.g.
    ``'test' is a string, not a mapping``: what readers index into is checked, once, here."""
    episode = data.get("episode") or {}
    checks = [(data, ("episode", "data", *_NUMBERS), _mapping, "a mapping", ""),
              (data, _TEXTS, lambda v: isinstance(v, str), "a string", ""),
              (data, ("budget", "seed", "version", "threads"), _number, "a number", ""),
              *[(data.get(key), fields, _number, "a number", f"{key}.") for key, fields in _NUMBERS.items()],
              (episode, ("train", "test"), _mapping, "a mapping", "episode."),
              *[(episode.get(s), ("n_way", "n_shot", "n_query"), _number, "a number", f"episode.{s}.")
                for s in ("train", "test") if isinstance(episode, dict)]]
    tests = data.get("tests")
    if tests is not None and not (isinstance(tests, list) and all(isinstance(t, dict) for t in tests)):
        return "'tests' is not a list of test records"
    for i, record in enumerate(tests or []):
        checks += [(record, ("acc", "ci95", "error", *_MACRO), _number, "a number", f"tests[{i}]."),
                   (record, ("episode",), _mapping, "a mapping", f"tests[{i}]."),
                   (record, ("overrides",), _overrides, "a list of overrides", f"tests[{i}].")]
    return next((p for p in (_wrong(*c) for c in checks) if p), None)


def _threads() -> Optional[int]:
    try:
        import torch

        return int(torch.get_num_threads())
    except ImportError:  # pragma: no cover
        return None


_CODE_VERSION: Optional[str] = None


def code_version() -> str:
    """``git:<commit>[+dirty]`` when the package runs from a git checkout, else ``metafsl <version>``."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        from metafsl import __version__

        _CODE_VERSION = f"metafsl {__version__}"
        here = Path(__file__).resolve().parent
        if "site-packages" in here.parts:  # an installed copy: a surrounding repo is not its source
            return _CODE_VERSION
        try:
            commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                    text=True, timeout=5)
            if commit.returncode == 0 and commit.stdout.strip():
                dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                _CODE_VERSION = f"git:{commit.stdout.strip()[:12]}{'+dirty' if dirty else ''}"
        except (OSError, subprocess.SubprocessError):
            pass
    return _CODE_VERSION


def backbone_label(node: Dict[str, Any]) -> str:
    """``timm:resnet10t`` for a generic torchvision/timm option, else the option's name."""
    model = node.get("model")
    return node["name"] if not model or model == node["name"] else f"{node['name']}:{model}"
