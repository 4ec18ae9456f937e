"""Memory-lean second-order MAML (``algo.recompute_inner=true``) against the default: peak memory
and time of one meta-iteration on the miniImageNet shape (conv4 with 32 filters, 84x84 RGB,
5-way 1-shot, 15 queries per class, meta-batch 4: Finn et al.'s setting), 5 and 10 inner steps.

    make bench-memory                             # writes docs/evidence/maml_memory/
    python scripts/bench_maml_memory.py --smoke   # tiny shapes, seconds (tests)

Each (option, steps) runs in a fresh process so that its peak resident memory is its own: the
figure is the peak RSS during the meta-iterations minus the RSS before the first one (model and
data already there).  The meta-gradients of both options are compared in the parent process.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from metafsl.algorithms.maml import MAML  # noqa: E402
from metafsl.data.sampler import TaskBatch  # noqa: E402
from metafsl.models import build_backbone  # noqa: E402

FULL = dict(size=84, hidden=32, way=5, shot=1, query=15, tasks=4, iters=3)
SMOKE = dict(size=16, hidden=4, way=3, shot=1, query=2, tasks=2, iters=1)


def learner(shape, steps: int, recompute: bool, dtype=torch.float32) -> MAML:
    torch.manual_seed(0)
    backbone = build_backbone("conv4", 3, shape["size"], hidden=shape["hidden"])
    return MAML(backbone, shape["way"], inner_lr=0.01, inner_steps=steps, recompute_inner=recompute).to(dtype)


def batch(shape, dtype=torch.float32) -> TaskBatch:
    g = torch.Generator().manual_seed(1)
    w, s, q, b, n = shape["way"], shape["shot"], shape["query"], shape["tasks"], shape["size"]
    return TaskBatch(torch.rand(b, w * s, 3, n, n, generator=g, dtype=dtype),
                     torch.arange(w).repeat_interleave(s).expand(b, -1),
                     torch.rand(b, w * q, 3, n, n, generator=g, dtype=dtype),
                     torch.arange(w).repeat_interleave(q).expand(b, -1), w, s, q)


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def one(shape, steps: int, recompute: bool) -> dict:
    """Peak memory over the RSS before the first meta-iteration, and seconds per meta-iteration."""
    algo, tasks = learner(shape, steps, recompute), batch(shape)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to the current RSS
    before = status_mib("VmRSS")
    start = time.perf_counter()
    for _ in range(shape["iters"]):
        algo.zero_grad()
        algo.meta_backward(tasks)
    seconds = (time.perf_counter() - start) / shape["iters"]
    return {"steps": steps, "recompute_inner": recompute, "peak_mib": status_mib("VmHWM") - before, "seconds": seconds}


def same_gradient(shape, steps: int) -> float:
    """Largest relative difference between the two options' meta-gradients (float64)."""
    grads = []
    for recompute in (False, True):
        algo = learner(shape, steps, recompute, torch.float64)
        algo.meta_backward(batch(shape, torch.float64))
        grads.append(torch.cat([p.grad.flatten() for p in algo.parameters()]))
    return float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="evidence dir (results.json, results.md)")
    ap.add_argument("--one", nargs=2, type=int, metavar=("STEPS", "RECOMPUTE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shape = SMOKE if args.smoke else FULL
    if args.one:
        print(json.dumps(one(shape, args.one[0], bool(args.one[1]))))
        return 0
    rows = []
    for steps in ((1, 2) if args.smoke else (5, 10)):
        for recompute in (0, 1):
            cmd = [sys.executable, __file__, "--one", str(steps), str(recompute)] + (["--smoke"] if args.smoke else [])
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        rows[-1]["max_rel_grad_diff"] = same_gradient(SMOKE if args.smoke else dict(FULL, tasks=1), steps)
    lines = ["| inner steps | recompute_inner | peak memory (MiB over start) | s / meta-iteration | meta-grad rel. diff |",
             "|---|---|---|---|---|"]
    for r in rows:
        diff = f"{r['max_rel_grad_diff']:.1e}" if "max_rel_grad_diff" in r else ""
        lines.append(f"| {r['steps']} | {str(bool(r['recompute_inner'])).lower()} | {r['peak_mib']:.0f} | "
                     f"{r['seconds']:.2f} | {diff} |")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"shape": shape, "rows": rows}, indent=1) + "\n")
        (args.out / "results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
