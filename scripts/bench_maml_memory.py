"""Memory-lean second-order MAML (``algo.recompute_inner=true``) against the default: peak memory
and time of one meta-iteration on the miniImageNet shape (conv4 with 32 filters, 84x84 RGB,
5-way 1-shot, 15 queries per class, meta-batch 4: Finn et al.'s setting), 5 and 10 inner steps.

    make bench-memory                             # writes docs/evidence/maml_memory/
    python scripts/bench_maml_memory.py --smoke   # tiny shapes, seconds (tests)
    python scripts/bench_maml_memory.py --device cuda --out DIR   # on a GPU

Each (option, steps) runs in a fresh process so that its peak memory is its own.  CPU: the
peak RSS during the meta-iterations minus the RSS before the first one (model and data already
there), with glibc's default malloc (what a user's process takes; its heap keeps freed memory
of medium-sized tensors, so this includes the allocator's fragmentation), then again in another
fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` ("live": nearly every tensor mapped on its own
and returned when freed, so the RSS follows the tensors alive; its time is not used), and the
peak of torch's own CPU allocations ("tensors": the memory events of ``torch.profiler``, summed in
time order; the CPU counterpart of the CUDA figure, in a third fresh process).  CUDA:
``torch.cuda.max_memory_allocated`` (and reserved) over the memory allocated before.  The time is
the mean of the meta-iterations after a first, warm-up one.  The meta-gradients of both options
are compared in float64 in the parent process.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
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


def meta_iterations(algo: MAML, tasks: TaskBatch, iters: int, sync) -> float:
    """Seconds per meta-iteration, the first (warm-up) one left out of the mean."""
    times = []
    for _ in range(iters + 1):
        start = time.perf_counter()
        algo.zero_grad()
        algo.meta_backward(tasks)
        sync()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / iters


def tensor_peak_mib(run) -> float:
    """The peak of the bytes torch's allocator holds while ``run()`` runs, over what it held before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak / 2**20


def one(shape, steps: int, recompute: bool, device: str = "cpu", tensors: bool = False) -> dict:
    """Peak memory over the memory before the first meta-iteration, and seconds per meta-iteration."""
    algo, tasks = learner(shape, steps, recompute).to(device), batch(shape)
    tasks = dataclasses.replace(tasks, **{k: getattr(tasks, k).to(device) for k in ("support_x", "support_y", "query_x", "query_y")})
    row = {"steps": steps, "recompute_inner": recompute, "device": device}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        row["seconds"] = meta_iterations(algo, tasks, shape["iters"], torch.cuda.synchronize)
        row["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        row["reserved_mib"] = (torch.cuda.max_memory_reserved() - before) / 2**20
        return row
    if tensors:
        run = functools.partial(meta_iterations, algo, tasks, shape["iters"], lambda: None)
        return dict(row, peak_mib=tensor_peak_mib(run))
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to the current RSS
    before = status_mib("VmRSS")
    row["seconds"] = meta_iterations(algo, tasks, shape["iters"], lambda: None)
    row["peak_mib"] = status_mib("VmHWM") - before
    return row


def measure(shape_flag, steps: int, recompute: int, device: str, env=None, tensors: bool = False) -> dict:
    """``one`` in a fresh process (with ``env`` added to its environment)."""
    cmd = ([sys.executable, __file__, "--one", str(steps), str(recompute), "--device", device] + shape_flag
           + ["--tensors"] * tensors)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_gradient(shape, steps: int) -> float:
    """Largest relative difference between the two options' meta-gradients (float64)."""
    grads = []
    for recompute in (False, True):
        algo = learner(shape, steps, recompute, torch.float64)
        algo.meta_backward(batch(shape, torch.float64))
        grads.append(torch.cat([p.grad.flatten() for p in algo.parameters()]))
    return float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())


#: glibc: map every allocation of 64 KiB or more on its own, returned to the system when freed
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def table(rows, device: str):
    """The rows as a Markdown table, with each figure as a fraction of the default's."""
    cols = (["peak_mib", "live_peak_mib", "tensor_peak_mib"] if device == "cpu"
            else ["peak_mib", "reserved_mib"])
    names = {"peak_mib": "peak (MiB over start)", "live_peak_mib": "live peak", "tensor_peak_mib": "tensors peak",
             "reserved_mib": "peak reserved"}
    lines = ["| inner steps | recompute_inner | device | " + " | ".join(names[c] for c in cols)
             + " | s / meta-iteration | meta-grad rel. diff |", "|---" * (len(cols) + 5) + "|"]
    default = {}
    for r in rows:
        base = default.setdefault(r["steps"], r)
        figures = [f"{r[c]:.0f}" + ("" if r is base else f" ({r[c] / base[c]:.2f})") for c in cols]
        diff = f"{r['max_rel_grad_diff']:.1e}" if "max_rel_grad_diff" in r else ""
        lines.append(f"| {r['steps']} | {str(bool(r['recompute_inner'])).lower()} | {r['device']} | "
                     + " | ".join(figures) + f" | {r['seconds']:.3f} | {diff} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="evidence dir (results.json, results.md)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--one", nargs=2, type=int, metavar=("STEPS", "RECOMPUTE"), help=argparse.SUPPRESS)
    ap.add_argument("--tensors", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shape = SMOKE if args.smoke else FULL
    if args.one:
        print(json.dumps(one(shape, args.one[0], bool(args.one[1]), args.device, args.tensors)))
        return 0
    rows = []
    flag = ["--smoke"] if args.smoke else []
    for steps in ((1, 2) if args.smoke else (5, 10)):
        for recompute in (0, 1):
            row = measure(flag, steps, recompute, args.device)
            if args.device == "cpu":
                row["live_peak_mib"] = measure(flag, steps, recompute, "cpu", LIVE_ENV)["peak_mib"]
                row["tensor_peak_mib"] = measure(flag, steps, recompute, "cpu", tensors=True)["peak_mib"]
            rows.append(row)
        rows[-1]["max_rel_grad_diff"] = same_gradient(SMOKE if args.smoke else dict(FULL, tasks=1), steps)
    lines = table(rows, args.device)
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"shape": shape, "rows": rows}, indent=1) + "\n")
        (args.out / "results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
