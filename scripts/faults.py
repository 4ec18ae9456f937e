"""Fault injection: kill a tiny training at many points, resume each, compare with an uninterrupted run.

    python scripts/faults.py [--points 12] [--seed 0] [--out <dir>]      (make faults)

Every point is (hook event, iteration, action): ``exit`` hard-exits the process as ``kill -9``
would (between steps, right after a checkpoint write, at the start of the final validation or of
the final test); ``SIGTERM``/``SIGINT`` send the signal a cluster preemption or Ctrl-C sends.
Each killed run is resumed with ``resume=true`` until it finishes; it counts as identical when
its metrics.jsonl (without wall-clock seconds), summary validation and test results and final
weights equal the uninterrupted run's.  Not part of the test suite (it takes minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RUNNER = [sys.executable, str(REPO / "tests" / "fault_runner.py")]
METAFSL = [sys.executable, "-m", "metafsl.cli"]
ITERATIONS = 12
TINY = ["dataset.n_classes=60", "dataset.examples_per_class=20", "trainer=fast",
        f"trainer.iterations={ITERATIONS}", "trainer.val_every=4", "trainer.val_episodes=4",
        "trainer.log_every=1", "eval.episodes=8", "episode.train.n_query=5", "episode.test.n_query=5",
        "trainer.checkpoint_every_minutes=0.0001", "device=cpu"]


def train(run: Path, *extra: str, fault=None) -> int:
    cmd = [*RUNNER, *map(str, fault), "--"] if fault else METAFSL
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([*cmd, "train", f"hydra.run.dir={run}", *TINY, *extra], capture_output=True,
                          text=True, env=env)
    return proc.returncode


def record(run: Path):
    metrics = [{k: v for k, v in json.loads(x).items() if k != "seconds"}
               for x in (run / "metrics.jsonl").read_text().splitlines()]
    s = json.loads((run / "summary.json").read_text())
    weights = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    return metrics, s["val"], s["test"]["acc"], weights


def same(a, b) -> bool:
    return a[:3] == b[:3] and all(torch.equal(a[3][k], b[3][k]) for k in a[3])


def points(n: int, rng: random.Random):
    """``n`` fault points spread over the kinds of moments a run can die at."""
    kinds = [lambda: ("iteration_end", rng.randint(1, ITERATIONS), "exit"),
             lambda: ("checkpoint_written", rng.randint(1, ITERATIONS), "exit"),
             lambda: ("iteration_end", rng.randint(1, ITERATIONS - 1), "SIGTERM"),
             lambda: ("iteration_end", rng.randint(1, ITERATIONS - 1), "SIGINT"),
             lambda: ("final_validation_start", -1, "exit"),
             lambda: ("test_start", -1, "exit")]
    return [kinds[i % len(kinds)]() for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="metafsl-faults-"))
    if train(root / "reference") != 0:
        print("the uninterrupted reference run failed")
        return 1
    reference = record(root / "reference")
    identical = 0
    for i, fault in enumerate(points(args.points, random.Random(args.seed))):
        run = root / f"{i:02d}_{fault[0]}_{fault[1]}_{fault[2]}"
        code = train(run, fault=fault)
        resumes = 0
        while not (run / "summary.json").is_file() and resumes < 3:
            code = train(run, "resume=true")
            resumes += 1
        ok = code == 0 and same(record(run), reference)
        identical += ok
        print(f"{run.name:<40} resumed {resumes}x  {'identical' if ok else 'DIFFERENT'}", flush=True)
    print(f"{identical}/{args.points} killed-and-resumed runs ended identical to the uninterrupted run "
          f"({root}).")
    return 0 if identical == args.points else 1


if __name__ == "__main__":
    sys.exit(main())
