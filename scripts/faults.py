"""Fault injection (issue 18): kill tiny trainings at random points, resume each, compare.

    make faults                                   # = python scripts/faults.py (24 trials)
    python scripts/faults.py --trials 30 --seed 0 --jobs 2 --max-minutes 9   # docs/benchmarks.md
    python scripts/faults.py --quick --trials 2   # smoke test (tests/test_faults_script.py)

Exit code 0 when every interrupted run resumed identically, 1 otherwise.  Outcomes per trial:
identical, differed (with the first difference), failed (the resume's one-line error) and missed
(the process ended before the signal; not counted).

For each scenario (a tiny glyphs ProtoNet run; a Reptile run with its SGD + linear-decay
schedule and inner loop) one uninterrupted reference run records its event stream: the
``metafsl.engine.hooks`` events and every ``os.replace`` into the run dir (the atomic-write
renames of checkpoints and summary.json).  Each trial then runs the same command, kills it
once, resumes it once (``metafsl train <same args> resume=true hydra.run.dir=<same dir>``) and
compares the result with the reference:

- ``hook``: hard exit (as ``kill -9``) at a random event of the reference's stream (between
  steps, after a checkpoint write, at the start of the final validation or test);
- ``write``: hard exit inside a random atomic write into the run dir: the temp file is
  truncated to half and never renamed (a kill in the middle of ``torch.save``);
- ``sigkill`` / ``sigterm`` / ``sigint``: that signal to the process after a random delay over
  the reference's duration (anywhere: start-up, steps, validation, writes, final test).

Compared: ``metrics.jsonl`` (wall-clock keys such as ``seconds`` ignored), ``summary.json``
(same) and every tensor and value of ``checkpoints/last.pt`` and ``best.pt`` (``config.resume``
ignored).  When the kill left no checkpoint the resume is refused; the trial then reruns the
command without ``resume=true``, as a user would, and compares that.  Before any trial the
comparison checks itself on copies of the reference: an exact copy must compare identical, a copy
with one weight of last.pt moved by 1e-3 or one metrics value changed must not.

Every launched process is a real process running ``metafsl.cli.main`` (the ``metafsl``
entry point): ``--launcher fork`` (default) forks it from this process after the heavy imports
(a fresh interpreter costs ~10 s of imports on a small CPU); ``--launcher exec`` starts a new
interpreter for each.  Signals, exit codes and files are those of the real command.
Evidence (configs, report.md, summary.json; no checkpoints) goes to ``--evidence``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

KINDS = ("hook", "write", "sigkill", "sigterm", "sigint")
SIGNALS = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}
DIED = 75  # exit code of a process killed by its own fault listener
GLYPHS = ["device=cpu", "dataset.n_classes=40", "dataset.examples_per_class=20", "backbone=conv4_32"]
SHAPE = ["trainer.iterations=12", "trainer.val_every=4", "trainer.val_episodes=6",
         "trainer.log_every=2", "eval.episodes=15"]
SCENARIOS = {
    "protonet": [*GLYPHS, "algo=protonet", "trainer=fast", *SHAPE],
    # SGD outer loop with a linear LR decay (scheduler state) and an Adam inner loop
    "reptile": [*GLYPHS, "algo=reptile", "trainer=reptile", "trainer.meta_batch_size=1",
                "algo.inner_steps=2", "algo.test_inner_steps=2", *SHAPE],
}
QUICK = {"protonet": [*GLYPHS, "algo=protonet", "trainer=fast", "trainer.iterations=4",
                      "trainer.val_every=2", "trainer.val_episodes=2", "trainer.log_every=1",
                      "eval.episodes=4", "episode.train.n_query=2", "episode.test.n_query=2"]}
#: record keys that measure wall-clock time, never compared
WALL_CLOCK = {"seconds", "time", "timestamp", "elapsed", "date", "wall_seconds"}


# ---------------------------------------------------------------- inside a launched process

class Recorder:
    """Writes the process's event stream (one JSON line each, unbuffered) and dies on cue."""

    def __init__(self, spec: Dict[str, Any]):
        self.file = open(spec["events"], "a", buffering=1)
        self.t0, self.die = spec["t0"], spec.get("die")
        self.run_dir = os.path.realpath(spec["run_dir"])
        self.count = {"hook": 0, "replace": 0}

    def note(self, stream: str, what: List[Any], src: Optional[str] = None) -> None:
        index = self.count[stream]
        self.count[stream] += 1
        fatal = self.die == [stream, index]
        self.file.write(json.dumps({"t": round(time.time() - self.t0, 3), "stream": stream,
                                    "index": index, "what": what, "fatal": fatal}) + "\n")
        if fatal:
            if src is not None and os.path.exists(src):  # half a temp file: a kill mid-write
                os.truncate(src, os.path.getsize(src) // 2)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(DIED)

    def install(self) -> None:
        from metafsl.engine import hooks

        hooks.LISTENERS.append(lambda event, it: self.note("hook", [event, it]))
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            dst_path = os.path.realpath(dst)
            if dst_path.startswith(self.run_dir + os.sep):
                self.note("replace", [os.path.relpath(dst_path, self.run_dir)], str(src))
            return real(src, dst, *args, **kwargs)

        os.replace = replace


def child_main(spec: Dict[str, Any]) -> int:
    """What a launched process runs: default signal handling, the recorder, the real CLI."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    Recorder(spec).install()
    from metafsl.cli import main

    return main(spec["args"])


def _forked_child(spec: Dict[str, Any], log: Path) -> None:
    """In the forked process: output to ``log``, run, exit as the interpreter would."""
    import traceback

    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = child_main(spec)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:  # like python: traceback, then die of SIGINT
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# ---------------------------------------------------------------- launching and watching

@dataclass
class Child:
    """A launched ``metafsl`` process (forked or exec'd); exit codes as ``subprocess`` gives them
    (negative: killed by that signal)."""
    pid: int
    popen: Optional[subprocess.Popen] = None
    rc: Optional[int] = None
    started: float = field(default_factory=time.time)

    def poll(self) -> Optional[int]:
        if self.rc is None:
            if self.popen is not None:
                self.rc = self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.rc = os.waitstatus_to_exitcode(status)
        return self.rc

    def wait(self, timeout: float) -> Optional[int]:
        """The exit code, or None after killing a process that outlived ``timeout``."""
        deadline = time.time() + timeout
        while self.poll() is None:
            if time.time() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                while self.poll() is None:
                    time.sleep(0.05)
                return None
            time.sleep(0.02)
        return self.rc


def launch(launcher: str, args: List[str], run_dir: Path, log: Path, events: Path,
           die: Optional[List[Any]] = None) -> Child:
    """Start ``metafsl <args>`` as a real process that records its events into ``events``."""
    spec = {"args": args, "run_dir": str(run_dir), "events": str(events), "die": die, "t0": time.time()}
    if launcher == "exec":
        spec_path = log.with_suffix(".spec.json")
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                         os.environ.get("PYTHONPATH")]))}
        with log.open("w") as out:
            popen = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                                     stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return Child(popen.pid, popen, started=spec["t0"])
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _forked_child(spec, log)
    return Child(pid, started=spec["t0"])


def warm_up(launcher: str) -> None:
    """Fork launcher: import what ``metafsl train`` imports, once, before any fork."""
    if launcher != "fork":
        return
    import contextlib
    import importlib
    import io
    import warnings

    os.environ.setdefault("GYM_DISABLE_WARNINGS", "1")
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        for module in ("torch", "hydra", "learn2learn", "matplotlib", "metafsl.cli", "metafsl.apps",
                       "metafsl.commands.train"):
            try:
                importlib.import_module(module)
            except ImportError:
                pass
        if "matplotlib" in sys.modules:  # the run's curves.png (Agg, as metafsl sets it)
            sys.modules["matplotlib"].use("Agg", force=True)
            importlib.import_module("matplotlib.pyplot")


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` (JSON-able result) in a forked process, so that this one never runs torch ops
    (their thread pools would not survive the later forks)."""
    read, write = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:  # never return into the parent's code from here
            os.close(read)
            try:
                payload = {"ok": fn(*args)}
            except BaseException as exc:  # reported by the parent
                payload = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write, "w") as f:
                f.write(json.dumps(payload))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        data = f.read()
    os.waitpid(pid, 0)
    payload = json.loads(data) if data else {"error": "the comparing process died"}
    if "error" in payload:
        raise RuntimeError(payload["error"])
    return payload["ok"]


def read_events(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by the kill
    return events


def last_line(log: Path) -> str:
    """The one-line error a failed command printed (its last non-empty line)."""
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.exists() else []
    return lines[-1][:300] if lines else "(no output)"


# ---------------------------------------------------------------- comparing two run dirs

def strip_wall_clock(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_wall_clock(v) for k, v in obj.items() if k not in WALL_CLOCK}
    if isinstance(obj, list):
        return [strip_wall_clock(v) for v in obj]
    return obj


def _same_tensor(a: Any, b: Any) -> bool:
    import torch

    if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    return torch.equal(a, b)


def first_diff(a: Any, b: Any, path: str) -> Optional[str]:
    """Where ``b`` (resumed) first differs from ``a`` (reference), or None if identical."""
    import torch

    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=lambda k: (k not in ("iteration", "split"), str(k))):
            if k not in a or k not in b:
                return f"{path}.{k} (only in the {'reference' if k in a else 'resumed run'})"
            found = first_diff(a[k], b[k], f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        found = next((d for i, (x, y) in enumerate(zip(a, b)) if (d := first_diff(x, y, f"{path}[{i}]"))), None)
        return found or (f"{path} ({len(a)} entries vs {len(b)})" if len(a) != len(b) else None)
    if torch.is_tensor(a) or torch.is_tensor(b):
        return None if _same_tensor(a, b) else f"{path} (tensor differs)"
    if a != b and not (a != a and b != b):  # NaN equals NaN here
        return f"{path}: {a!r} vs {b!r}"
    return None


def _metrics(run: Path) -> List[Any]:
    rows = []
    for n, line in enumerate((run / "metrics.jsonl").read_text().splitlines()):
        try:
            rows.append(strip_wall_clock(json.loads(line)))
        except json.JSONDecodeError:
            rows.append(f"unreadable line {n + 1}")
    return rows


def _row_context(found: str, ref_rows: List[Any], run_rows: List[Any]) -> str:
    """' (row 4: reference train@6, resumed train@2)' for a difference inside a metrics row."""
    if not found.startswith("metrics.jsonl["):
        return ""
    i = int(found[len("metrics.jsonl["):].split("]")[0])
    name = lambda r: f"{r.get('split')}@{r.get('iteration')}" if isinstance(r, dict) else str(r)  # noqa: E731
    return f" (row {i + 1}: reference {name(ref_rows[i])}, resumed {name(run_rows[i])})"


def _checkpoint(path: Path) -> Dict[str, Any]:
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=True)
    ck.get("config", {}).pop("resume", None)
    return strip_wall_clock(ck)


def compare_runs(ref: str, run: str) -> Optional[str]:
    """The first difference between two finished run dirs, and which of the compared files
    differ at all (None: identical)."""
    ref_dir, run_dir = Path(ref), Path(run)
    missing = [n for n in ("metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt")
               if not (run_dir / n).exists()]
    if missing:
        return f"{', '.join(missing)} missing"
    rows = _metrics(ref_dir), _metrics(run_dir)
    found = {"metrics.jsonl": first_diff(*rows, "metrics.jsonl")}
    if found["metrics.jsonl"]:
        found["metrics.jsonl"] += _row_context(found["metrics.jsonl"], *rows)
    summary = [strip_wall_clock(json.loads((d / "summary.json").read_text())) for d in (ref_dir, run_dir)]
    found["summary.json"] = first_diff(*summary, "summary.json")
    for name in ("last.pt", "best.pt"):
        found[name] = first_diff(*(_checkpoint(d / "checkpoints" / name) for d in (ref_dir, run_dir)), name)
    differ = [k for k, v in found.items() if v]
    if not differ:
        return None
    same = [k for k, v in found.items() if not v]
    return f"{found[differ[0]]}" + (f"; also differ: {', '.join(differ[1:])}" if differ[1:] else "") + (
        f"; identical: {', '.join(same)}" if same else "")


def checkpoint_iteration(run: str) -> Optional[int]:
    """The iteration stored in a run dir's last.pt (None: none, or unreadable)."""
    import torch

    path = Path(run) / "checkpoints" / "last.pt"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["iteration"])
    except Exception:
        return None


def self_check(ref: str, scratch: str) -> List[str]:
    """The comparison on copies of a finished run: what it got wrong (empty: nothing)."""
    import torch

    copy = Path(scratch)
    shutil.copytree(ref, copy)
    problems = [] if compare_runs(ref, str(copy)) is None else ["an exact copy compared different"]
    path = copy / "checkpoints" / "last.pt"
    ck = torch.load(path, map_location="cpu", weights_only=True)
    name = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][name] = ck["model"][name] + 1e-3
    torch.save(ck, path)
    if compare_runs(ref, str(copy)) is None:
        problems.append(f"last.pt with {name} moved by 1e-3 compared identical")
    shutil.copyfile(Path(ref) / "checkpoints" / "last.pt", path)
    rows = (copy / "metrics.jsonl").read_text().splitlines()
    row = json.loads(rows[-1])
    row["acc"] = row.get("acc", 0) + 1e-6
    (copy / "metrics.jsonl").write_text("\n".join(rows[:-1] + [json.dumps(row)]) + "\n")
    if compare_runs(ref, str(copy)) is None:
        problems.append("metrics.jsonl with one accuracy changed compared identical")
    shutil.rmtree(copy)
    return problems


# ---------------------------------------------------------------- the campaign

@dataclass
class Reference:
    name: str
    args: List[str]
    run_dir: Path
    duration: float
    events: List[Dict[str, Any]]

    def stream(self, name: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if e["stream"] == name]

    def final_iteration(self) -> int:
        return max(iterations_done(self.events), default=0)

    def validation_iterations(self) -> List[int]:
        """Iterations (but the last) that wrote last.pt: the periodic validations."""
        found, done = [], 0
        for e in self.events:
            if e["stream"] == "hook" and e["what"][0] == "iteration_end":
                done = e["what"][1]
            elif e["stream"] == "replace" and e["what"][0].endswith("last.pt") and done + 1 not in found:
                found.append(done + 1)
        return [it for it in found if it != self.final_iteration()]


@dataclass
class Campaign:
    launcher: str
    work: Path
    rng: random.Random

    def run(self, args: List[str], run_dir: Path, stem: Path, die=None, timeout: float = 900) -> tuple:
        """Launch, wait; returns (exit code or None if it timed out, the Child)."""
        child = launch(self.launcher, args, run_dir, stem.with_suffix(".log"), stem.with_suffix(".events"), die)
        return child.wait(timeout), child

    def warm_cache(self, args: List[str]) -> None:
        """``metafsl data`` once, so that the reference does not time the dataset cache's creation."""
        stem = self.work / "cache_warm_up"
        self.run(["data", *[a for a in args if a.startswith("dataset")]], self.work, stem)

    def reference(self, name: str, args: List[str]) -> Reference:
        run_dir = self.work / f"reference_{name}"
        run_dir.mkdir(parents=True)
        rc, child = self.run(["train", *args, f"hydra.run.dir={run_dir / 'run'}"], run_dir / "run", run_dir / "train")
        if rc != 0:
            sys.exit(f"The uninterrupted {name} run failed (exit {rc}): {last_line(run_dir / 'train.log')}")
        return Reference(name, args, run_dir / "run", time.time() - child.started,
                         read_events(run_dir / "train.events"))


def plan_kill(kind: str, ref: Reference, rng: random.Random) -> Dict[str, Any]:
    """Where a trial dies: an event index of the reference stream, or a signal after a delay."""
    if kind in ("hook", "write"):
        stream = ref.stream("hook" if kind == "hook" else "replace")
        if not stream:
            return {"skip": f"the reference run has no {kind} events"}
        e = rng.choice(stream)
        return {"die": [e["stream"], e["index"]], "target": "@".join(map(str, e["what"]))}
    hooks = ref.stream("hook")
    t = rng.uniform(0.8 * hooks[0]["t"] if hooks else 0.2 * ref.duration, 0.95 * ref.duration)
    before = [e for e in ref.events if e["t"] <= t]
    offset = round(t - (before[-1]["t"] if before else 0.0), 2)
    after = "@".join(map(str, before[-1]["what"])) if before else "the launch"
    return {"signal": kind, "anchor": len(before), "offset": offset,
            "target": f"{kind.upper()} {offset:.2f} s after {after}"}


def speed(events: List[Dict[str, Any]], ref: Reference, anchor: int) -> float:
    """How much slower than the reference this run goes (between its first and anchor events)."""
    if anchor < 2:
        return 1.0
    ref_span = ref.events[anchor - 1]["t"] - ref.events[0]["t"]
    span = events[anchor - 1]["t"] - events[0]["t"]
    return min(5.0, max(0.2, span / ref_span)) if ref_span > 0.1 else 1.0


def send_when(child: Child, events_path: Path, ref: Reference, plan: Dict[str, Any]) -> Optional[float]:
    """Send the planned signal at the same point of the run as in the reference: ``offset``
    seconds (scaled by the run's speed) after its ``anchor``-th event.  None: it ended first."""
    anchor, events = plan["anchor"], []
    while anchor and len(events) < anchor:
        if child.poll() is not None:
            return None
        time.sleep(0.01)
        events = read_events(events_path)
    start = time.time() if anchor else child.started
    deadline = start + plan["offset"] * speed(events, ref, anchor)
    while time.time() < deadline:
        if child.poll() is not None:
            return None
        time.sleep(0.005)
    if child.poll() is not None:
        return None
    os.kill(child.pid, SIGNALS[plan["signal"]])
    return time.time()


def landed(events: List[Dict[str, Any]], ref: Reference, orphans: List[str]) -> str:
    """Where the kill happened, from the killed run's own event stream and its leftovers."""
    fatal = next((e for e in events if e.get("fatal")), None)
    if fatal:
        what = "@".join(map(str, fatal["what"]))
        return f"at {what}" if fatal["stream"] == "hook" else f"inside the write of {what}"
    if orphans:
        return f"inside a write ({orphans[0]})"
    if not events:
        return "start-up or iteration 1"
    done = max(iterations_done(events), default=0)
    last = events[-1]["what"]
    if events[-1]["stream"] == "replace":
        return "after writing summary.json" if last[0] == "summary.json" else f"checkpoint writes of iteration {done + 1}"
    event, it = last
    if event == "iteration_end":
        if it == ref.final_iteration():
            return "final test"
        phase = ("step or validation" if it + 1 in ref.validation_iterations() else
                 "last step" if it + 1 == ref.final_iteration() else "step")
        return f"iteration {it + 1} ({phase})"
    return {"test_start": "final test", "final_validation_start": f"final validation ({it})",
            "checkpoint_written": f"checkpoint writes of iteration {it}"}.get(event, f"after {event}@{it}")


def iterations_done(events: List[Dict[str, Any]]) -> List[int]:
    return [e["what"][1] for e in events if e["stream"] == "hook" and e["what"][0] == "iteration_end"]


def orphan_temps(run_dir: Path) -> List[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*.tmp"))


def kill_once(camp: Campaign, ref: Reference, plan: Dict[str, Any], tdir: Path, args: List[str]) -> Dict[str, Any]:
    """Run the command and kill it as planned; what the kill did."""
    timeout = 60 + 6 * ref.duration
    child = launch(camp.launcher, args, tdir / "run", tdir / "kill.log", tdir / "kill.events", plan.get("die"))
    sent = send_when(child, tdir / "kill.events", ref, plan) if "signal" in plan else None
    rc = child.wait(timeout)
    events = read_events(tdir / "kill.events")
    iterations = iterations_done(events)
    interrupted = sent is not None if "signal" in plan else rc == DIED
    return {"kill_rc": rc, "interrupted": interrupted,
            "exit_after_signal_s": round(time.time() - sent, 2) if sent and rc is not None else None,
            "reached_iteration": max(iterations, default=0),
            "saved_iteration": isolated(checkpoint_iteration, str(tdir / "run")),
            "orphan_temps": orphan_temps(tdir / "run"),
            "where": landed(events, ref, orphan_temps(tdir / "run")) if interrupted else "not interrupted"}


def resume_once(camp: Campaign, ref: Reference, tdir: Path, args: List[str], saved: Optional[int]) -> Dict[str, Any]:
    """Resume (or, when no checkpoint was left, rerun) and compare with the reference."""
    timeout = 60 + 6 * ref.duration
    rc, _ = camp.run([*args, "resume=true"], tdir / "run", tdir / "resume", timeout=timeout)
    note = ""
    if rc != 0 and saved is None:
        note = f"resume refused ({last_line(tdir / 'resume.log')}); reran without resume=true"
        rc, _ = camp.run(args, tdir / "run", tdir / "rerun", timeout=timeout)
    log = tdir / ("rerun.log" if note else "resume.log")
    if rc != 0:
        detail = "timed out" if rc is None else last_line(log)
        return {"resume_rc": rc, "outcome": "failed", "detail": detail, "note": note}
    diff = isolated(compare_runs, str(ref.run_dir), str(tdir / "run"))
    leftovers = orphan_temps(tdir / "run")
    if leftovers:  # not a wrong result, but litter nobody will remove
        note = "; ".join(filter(None, [note, f"temp file(s) left after the resume: {', '.join(leftovers)}"]))
    return {"resume_rc": rc, "outcome": "differed" if diff else "identical", "detail": diff or "", "note": note,
            "leftover_temps": leftovers}


def run_trial(camp: Campaign, number: int, ref: Reference, kind: str, plan: Dict[str, Any]) -> Dict[str, Any]:
    tdir = camp.work / f"{number:03d}_{ref.name}_{kind}"
    tdir.mkdir(parents=True)
    record: Dict[str, Any] = {"trial": number, "scenario": ref.name, "kind": kind,
                              "planned": plan.get("target", ""), "dir": str(tdir)}
    if "skip" in plan:
        return {**record, "outcome": "missed", "detail": plan["skip"], "where": "-"}
    args = ["train", *ref.args, f"hydra.run.dir={tdir / 'run'}"]
    record.update(kill_once(camp, ref, plan, tdir, args))
    if not record["interrupted"]:
        if record["kill_rc"] not in (0, DIED):  # it broke before the fault: that is a failure
            return {**record, "outcome": "failed", "detail": last_line(tdir / "kill.log")}
        return {**record, "outcome": "missed", "detail": f"the process ended first (exit {record['kill_rc']})"}
    record.update(resume_once(camp, ref, tdir, args, record["saved_iteration"]))
    return record


# ---------------------------------------------------------------- report

OUTCOMES = ("identical", "differed", "failed", "missed")


def exit_name(rc: Optional[int]) -> str:
    if rc is None:
        return "timeout"
    if rc < 0:
        return signal.Signals(-rc).name
    return f"{rc} (fault)" if rc == DIED else str(rc)


def by_kind(trials: List[Dict[str, Any]]) -> List[List[Any]]:
    """Rows: kind, trials (interrupted), identical, differed, failed, missed, exit codes seen."""
    rows = []
    for kind in dict.fromkeys(t["kind"] for t in trials):
        ts = [t for t in trials if t["kind"] == kind]
        counts = [sum(t["outcome"] == o for t in ts) for o in OUTCOMES]
        codes = sorted({exit_name(t.get("kill_rc")) for t in ts if t["outcome"] != "missed"})
        rows.append([kind, len(ts) - counts[-1], *counts, ", ".join(codes)])
    return rows


def trial_rows(trials: List[Dict[str, Any]]) -> List[List[Any]]:
    rows = []
    for t in trials:
        saved = t.get("saved_iteration")
        kept = f"{'-' if saved is None else saved}/{t.get('reached_iteration', '-')}"
        detail = "; ".join(x for x in (t.get("detail"), t.get("note")) if x)
        rows.append([t["trial"], t["scenario"], t["kind"], t["planned"], t.get("where", "-"),
                     exit_name(t.get("kill_rc")), kept, exit_name(t.get("resume_rc")) if "resume_rc" in t else "-",
                     t["outcome"], detail])
    return rows


KIND_COLUMNS = ["kind", "trials", "identical", "differed", "failed", "missed", "exit codes of the killed runs"]
TRIAL_COLUMNS = ["#", "scenario", "kind", "planned kill", "landed", "killed run's exit", "last.pt it / reached",
                 "resume exit", "outcome", "first difference / error"]


def md_table(columns: List[str], rows: List[List[Any]]) -> str:
    cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows])


def report_md(meta: Dict[str, Any], trials: List[Dict[str, Any]]) -> str:
    counted = [t for t in trials if t["outcome"] != "missed"]
    same = sum(t["outcome"] == "identical" for t in counted)
    scen = "\n".join(f"- `{name}`: `{' '.join(args)}`" for name, args in meta["scenarios"].items())
    return (f"# Fault injection\n\n    {meta['command']}\n\n{meta['date']}, commit `{meta['commit']}`, "
            f"{meta['machine']}, launcher `{meta['launcher']}`, {meta['minutes']} min.\n\n"
            f"**{same} of {len(counted)} interrupted runs resumed to results identical to the "
            f"uninterrupted run** (metrics.jsonl without wall-clock keys, summary.json, every tensor of "
            f"last.pt and best.pt).\n\nScenarios (each trial adds `hydra.run.dir=<its dir>`):\n{scen}\n\n"
            f"{md_table(KIND_COLUMNS, by_kind(trials))}\n\n{md_table(TRIAL_COLUMNS, trial_rows(trials))}\n\n"
            "`last.pt it / reached`: the iteration stored in last.pt after the kill / the last iteration "
            "the killed run finished. `missed`: the process ended before the signal (not counted).\n")


def print_report(trials: List[Dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, shutil.get_terminal_size().columns))
    for title, columns, rows in (("by kind", KIND_COLUMNS, by_kind(trials)),
                                 ("trials", TRIAL_COLUMNS, trial_rows(trials))):
        table = Table(title=f"Fault injection: {title}", title_justify="left", header_style="bold")
        for c in columns:
            table.add_column(c)
        for r in rows:
            table.add_row(*[str(x) for x in r])
        console.print(table)


def tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) + "\n" if path.exists() else ""


def write_evidence(dest: Path, meta: Dict[str, Any], refs: Dict[str, Reference], trials: List[Dict[str, Any]]) -> None:
    """configs/, logs/ (tails, for trials that were not identical), summary.json, report.md."""
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("configs", "logs"):
        shutil.rmtree(dest / sub, ignore_errors=True)
        (dest / sub).mkdir()
    for name, ref in refs.items():
        shutil.copyfile(ref.run_dir / ".hydra" / "config.yaml", dest / "configs" / f"{name}.yaml")
    for t in trials:
        if t["outcome"] in ("differed", "failed"):
            for step in ("kill", "resume", "rerun"):
                text = tail(Path(t["dir"]) / f"{step}.log")
                if text:
                    (dest / "logs" / f"{t['trial']:03d}_{t['kind']}_{step}.log").write_text(text)
    clean = [{k: v for k, v in t.items() if k != "dir"} for t in trials]
    summary = {**meta, "by_kind": [dict(zip(KIND_COLUMNS, r)) for r in by_kind(trials)], "trials": clean}
    (dest / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (dest / "report.md").write_text(report_md(meta, trials))


# ---------------------------------------------------------------- main

def machine() -> str:
    model = ""
    if Path("/proc/cpuinfo").exists():
        model = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                      if x.startswith("model name")), "")
    from importlib.metadata import version

    return (f"{platform.machine()} {model}".strip() + f", {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {version('torch')}")


def commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=None, help="kills to try (default 24; 2 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    p.add_argument("--quick", action="store_true", help="one 4-iteration ProtoNet scenario (smoke test)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    p.add_argument("--scenarios", default=None, help="comma list (default: all of the mode)")
    p.add_argument("--launcher", choices=("fork", "exec"), default="fork")
    p.add_argument("--jobs", type=int, default=1, help="trials run at the same time")
    p.add_argument("--max-minutes", type=float, default=None, help="start no trial after this long")
    p.add_argument("--work", type=Path, default=None, help="scratch dir (default outputs/faults/<time>)")
    p.add_argument("--evidence", type=Path, default=None,
                   help="report dir (default docs/evidence/faults; <work>/evidence with --quick)")
    p.add_argument("--keep", action="store_true", help="keep the run dirs of identical trials too")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.trials = args.trials if args.trials is not None else (2 if args.quick else 24)
    args.kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in args.kinds if k not in KINDS]
    if bad or not args.kinds or args.trials < 0 or args.jobs < 1:
        p.error(f"--kinds takes {', '.join(KINDS)}; --trials >= 0; --jobs >= 1" + (f" (not {', '.join(bad)})" if bad else ""))
    return args


def scenarios_of(args: argparse.Namespace) -> Dict[str, List[str]]:
    table = QUICK if args.quick else SCENARIOS
    names = args.scenarios.split(",") if args.scenarios else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"Unknown scenario {', '.join(unknown)}; choose among: {', '.join(table)}.")
    return {n: table[n] for n in names}


def prepare_work(args: argparse.Namespace) -> Path:
    work = args.work or REPO / "outputs" / "faults" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if work.exists() and any(work.iterdir()):
        sys.exit(f"{work} is not empty; pass --work <a new dir>.")
    work.mkdir(parents=True, exist_ok=True)
    for var, sub in (("METAFSL_CACHE_DIR", "cache"), ("METAFSL_DATA_DIR", "data"), ("METAFSL_OUTPUT_DIR", "outputs")):
        os.environ[var] = str(work / sub)
    return work


def schedule(args: argparse.Namespace, refs: Dict[str, Reference], rng: random.Random) -> List[tuple]:
    """(reference, kind, kill plan) per trial; round robin: every kind on one scenario, then on the
    next.  Plans are drawn here, in order, so that ``--jobs`` does not change them."""
    names, k = list(refs), len(args.kinds)
    pairs = [(refs[names[(i // k) % len(names)]], args.kinds[i % k]) for i in range(args.trials)]
    return [(ref, kind, plan_kill(kind, ref, rng)) for ref, kind in pairs]


def start_worker(camp: Campaign, number: int, item: tuple) -> int:
    """Fork a process that runs one trial and leaves its record in <work>/<number>.json."""
    sys.stdout.flush()
    pid = os.fork()
    if pid:
        return pid
    try:  # never return into the parent's code from here
        started = time.time()
        try:
            record = run_trial(camp, number, *item)
        except BaseException as exc:  # reported as this trial's failure
            record = {"trial": number, "scenario": item[0].name, "kind": item[1],
                      "planned": item[2].get("target", ""), "outcome": "failed",
                      "detail": f"faults.py: {type(exc).__name__}: {exc}"}
        record["trial_seconds"] = round(time.time() - started, 1)
        (camp.work / f"{number:03d}.json").write_text(json.dumps(record))
    finally:
        os._exit(0)


def run_trials(args: argparse.Namespace, camp: Campaign, plan: List[tuple], started: float) -> List[Dict[str, Any]]:
    """Up to ``--jobs`` trials at a time; none started after ``--max-minutes``."""
    queue, running, records = list(enumerate(plan, 1)), {}, []
    while queue or running:
        if queue and args.max_minutes and time.time() - started > 60 * args.max_minutes:
            print(f"time budget of {args.max_minutes} min spent: {len(queue)} of {len(plan)} trials not run")
            queue = []
        while queue and len(running) < args.jobs:
            number, item = queue.pop(0)
            running[start_worker(camp, number, item)] = number
        if not running:
            break
        pid, _ = os.wait()
        number = running.pop(pid)
        path = camp.work / f"{number:03d}.json"
        t = json.loads(path.read_text()) if path.exists() else {
            "trial": number, "scenario": "?", "kind": "?", "planned": "", "outcome": "failed",
            "detail": "the trial's process died"}
        for key in ("detail", "note"):  # the scratch dir's path says nothing; keep the lines short
            t[key] = str(t.get(key, "")).replace(str(camp.work), "<work>")
        records.append(t)
        print(f"[{number}/{len(plan)}] {t['scenario']} {t['kind']} {t['planned']}: {t.get('where', '-')} -> "
              f"{t['outcome']} {t.get('detail', '')} ({t.get('trial_seconds', '-')} s)", flush=True)
        if t["outcome"] == "identical" and not args.keep:
            shutil.rmtree(t["dir"])
    return sorted(records, key=lambda r: r["trial"])


def campaign(args: argparse.Namespace) -> int:
    started = time.time()
    scenarios = scenarios_of(args)
    work = prepare_work(args)
    warm_up(args.launcher)
    camp = Campaign(args.launcher, work, random.Random(args.seed))
    print(f"ready after {time.time() - started:.1f} s", flush=True)
    refs = {}
    for name, scenario_args in scenarios.items():
        if not refs:
            camp.warm_cache(scenario_args)
        refs[name] = camp.reference(name, scenario_args)
        print(f"reference {name}: {refs[name].duration:.1f} s, {len(refs[name].events)} events", flush=True)
        problems = isolated(self_check, str(refs[name].run_dir), str(work / f"self_check_{name}"))
        if problems:
            sys.exit(f"The comparison is broken: {'; '.join(problems)}.")
        print(f"comparison self-check passed ({time.time() - started:.1f} s)", flush=True)
    trials = run_trials(args, camp, schedule(args, refs, camp.rng), started)
    return finish(args, refs, trials, started, work)


def finish(args, refs, trials, started, work) -> int:
    given = sys.argv[1:] if args.argv is None else args.argv
    meta = {"command": " ".join(["python scripts/faults.py", *given]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(),
            "machine": machine(), "launcher": args.launcher, "seed": args.seed,
            "minutes": round((time.time() - started) / 60, 1),
            "scenarios": {n: r.args for n, r in refs.items()}}
    print_report(trials)
    evidence = args.evidence or (work / "evidence" if args.quick else REPO / "docs" / "evidence" / "faults")
    write_evidence(evidence, meta, refs, trials)
    counted = [t for t in trials if t["outcome"] != "missed"]
    same = sum(t["outcome"] == "identical" for t in counted)
    print(f"{same} of {len(counted)} interrupted runs resumed identically. "
          f"Report: {evidence / 'report.md'}; run dirs: {work}")
    return 0 if same == len(counted) else 1


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    args.argv = argv
    if args.child:
        return child_main(json.loads(Path(args.child).read_text()))
    try:
        return campaign(args)
    except KeyboardInterrupt:
        print("Interrupted; the trials' run dirs so far are under the --work dir (default outputs/faults/).")
        return 130


if __name__ == "__main__":
    sys.exit(main())
