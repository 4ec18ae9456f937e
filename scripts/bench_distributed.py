"""Distributed training speed (issue 26): one process against N worker processes, same tasks.

    python scripts/bench_distributed.py docs/evidence/distributed              # CPU rows, 60 iterations
    python scripts/bench_distributed.py docs/evidence/distributed --device cuda  # 1 GPU, then all GPUs
    python scripts/bench_distributed.py /tmp/ev --smoke                         # seconds: a test

CPU rows: 1 process x 2 threads against 2 workers x 1 thread each (``distributed.nproc_per_node=2``,
``runtime.threads=1``), for ProtoNet (meta-batch 2: 2 episodes per step either way) and
second-order MAML (meta-batch 4), on Omniglot-shaped episodes (the built-in glyphs dataset, 28x28,
5-way 1-shot).  Each row is a real ``metafsl train`` in its own process; its speed is
``trainer.iterations`` over the training time rank 0 records in summary.json (process start-up
and the final test are not counted; one tiny validation is).  Writes ``results.json`` and
``results.md`` into the evidence dir given as argument; prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: method -> its settings (the meta-batch is the same for every row of a method)
METHODS = {
    "protonet": ["algo=protonet", "trainer.meta_batch_size=2"],
    "maml": ["algo=maml", "algo.first_order=false", "trainer.meta_batch_size=4"],
}


def _meta_batch(method: str) -> int:
    return int(next(a for a in METHODS[method] if a.startswith("trainer.meta_batch_size=")).split("=")[1])


def rows(device: str, gpus: int) -> list:
    """(label, workers, threads per worker, extra overrides) of each measured setting."""
    if device == "cuda":
        counts = sorted({1, max(1, gpus)})
        out = [(f"{n} GPU{'s' if n > 1 else ''}", n, "auto", ["device=auto"]) for n in counts]
        if gpus == 1:  # the distributed path on one GPU: two workers share it (Gloo)
            out.append(("2 workers on 1 GPU", 2, "auto", ["device=auto"]))
        return out
    return [("1 process x 2 threads", 1, 2, ["device=cpu"]), ("2 workers x 1 thread", 2, 1, ["device=cpu"])]


def train(out: Path, name: str, method: str, workers: int, threads, extra: list, args) -> dict:
    run = out / "runs" / f"{method}-{name.replace(' ', '')}"
    size = ["dataset.n_classes=60", "dataset.examples_per_class=20"] if args.smoke else []
    cmd = [sys.executable, "-m", "metafsl.cli", "train", *METHODS[method], *extra, *size,
           "dataset=glyphs", "dataset.image_size=28", "episode=5w1s", f"trainer.iterations={args.iterations}",
           f"trainer.val_every={args.iterations}", f"trainer.log_every={args.iterations}",
           "trainer.val_episodes=1", "test=false", f"runtime.threads={threads}",
           f"distributed.nproc_per_node={workers}", f"hydra.run.dir={run}",
           f"paths.output_dir={out / 'outputs'}", f"paths.data_dir={out / 'data'}"]
    path = os.pathsep.join(filter(None, (str(REPO / "src"), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads if threads != "auto" else "")}
    if threads == "auto":
        env.pop("OMP_NUM_THREADS")
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    summary = json.loads((run / "summary.json").read_text())
    seconds = float(summary["train"]["seconds"])
    episodes = int(summary["train"].get("episodes_per_step") or _meta_batch(method))
    return {"method": method, "setting": name, "workers": workers, "threads": threads,
            "iterations": args.iterations, "seconds": seconds,
            "iterations_per_s": round(args.iterations / seconds, 3),
            "episodes_per_s": round(args.iterations * episodes / seconds, 3)}


def table(results: list) -> str:
    lines = ["| method | setting | iterations/s | episodes/s | speed-up |", "|---|---|---|---|---|"]
    for method in METHODS:
        mine = [r for r in results if r["method"] == method]
        for r in mine:
            ratio = r["iterations_per_s"] / mine[0]["iterations_per_s"]
            lines.append(f"| {method} | {r['setting']} | {r['iterations_per_s']:.2f} | "
                         f"{r['episodes_per_s']:.2f} | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="evidence dir (results.json, results.md, the runs)")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--smoke", action="store_true", help="2 iterations on a tiny dataset (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iterations = 2
    gpus = 0
    if args.device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if not gpus:
            parser.error("--device cuda: no CUDA GPU here")
    args.out.mkdir(parents=True, exist_ok=True)
    methods = ["protonet"] if args.smoke else list(METHODS)
    results = [train(args.out, name, m, n, t, extra, args)
               for m in methods for name, n, t, extra in rows(args.device, gpus)]
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = table(results)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
