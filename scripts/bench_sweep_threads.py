"""A sweep of two parallel jobs on this machine, with and without per-job threads (issue 26).

    python scripts/bench_sweep_threads.py --out docs/evidence/sweep_threads
    python scripts/bench_sweep_threads.py --iterations 5      # seconds (smoke)

Runs ``metafsl sweep algo=maml,fomaml hydra/launcher=joblib hydra.launcher.n_jobs=2`` (MAML on
the built-in glyphs, 5-way 1-shot, no test) twice: with ``runtime.threads=<all cores>`` (what each
job took before ``runtime.threads`` existed: torch's default, all cores) and with the default
``runtime.threads=auto`` (cores / 2 each), and reports the sweep's wall time and each job's
training seconds (summary.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep(threads: str, iterations: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "metafsl.cli", "sweep", f"hydra.sweep.dir={out}", "algo=maml,fomaml",
           "dataset=glyphs", "episode=5w1s", f"trainer.iterations={iterations}", f"trainer.val_every={iterations}",
           "trainer.val_episodes=20", "test=false", f"runtime.threads={threads}",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("OMP_NUM_THREADS", None)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - start
    jobs = [json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))]
    return {"threads": threads, "sweep_seconds": wall,
            "job_train_seconds": [j["train"]["seconds"] for j in jobs], "job_threads": [j["threads"] for j in jobs]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None, help="evidence dir (results.json, results.md)")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [sweep(str(cores), args.iterations, Path(tmp) / "all"), sweep("auto", args.iterations, Path(tmp) / "auto")]
    lines = [f"{cores} cores, 2 parallel jobs of {args.iterations} MAML iterations each", "",
             "| runtime.threads | threads per job | sweep wall s | job training s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['job_threads']} | {r['sweep_seconds']:.1f} | "
                     f"{', '.join(f'{s:.1f}' for s in r['job_train_seconds'])} |")
    lines.append(f"\nspeed-up of auto: {rows[0]['sweep_seconds'] / rows[1]['sweep_seconds']:.2f}x (sweep wall time)")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
        (args.out / "results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
