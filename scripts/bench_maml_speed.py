"""MAML speed on the CPU (issue 26 section 3): learn2learn's MAML against metafsl, each speed lever
alone and combined, side by side on the same tasks, with a check of the meta-gradients.

    python scripts/bench_maml_speed.py --out docs/evidence/maml_speed            # the real run
    python scripts/bench_maml_speed.py --out /tmp/ms --smoke --compile-backend eager  # seconds

Two shapes, as ``make bench``: Omniglot (5-way 1-shot, 1 query per class, conv4 with 64 filters,
28x28, meta-batch 32, 1 inner step, second order) and miniImageNet (5-way 1-shot, 15 queries per
class, conv4 with 32 filters, 84x84 RGB, meta-batch 4, 5 inner steps, second order).  Every
variant starts from the same weights and trains (Adam) on the same pre-drawn meta-batches; the
time of drawing tasks is measured apart, and "ratio incl. task drawing" adds it to each side
(learn2learn's ``TaskDataset`` for the reference, as ``scripts/bench.py`` does; metafsl's
``EpisodeSampler`` for the others).  Variants:

- reference: learn2learn's ``MAML.clone()``/``adapt()`` per task, one ``backward()`` per task,
  on its own ``CNN4Backbone`` (conv-BN-ReLU-pool);
- metafsl default (``algo.backend=l2l``), ``algo.backend=vmap``;
- compile: ``runtime.compile=true`` (``metafsl.algorithms.maml_compiled``, inductor);
- compile + task threads: the same, the meta-batch's tasks on one thread per core, each with one
  intra-op thread (``runtime.task_threads``);
- vmap + compile: ``algo.backend=vmap runtime.compile=true``, the vmap backend's meta-loss and
  its gradient in one ``torch.compile``;
- ... + 2 workers: two processes of ``cores // 2`` threads, each with half of the meta-batch,
  the flattened gradient all-reduced over Gloo (what distributed training does): the default,
  compile, and vmap + compile (the combinations).

Each variant runs in processes of its own (so none inherits another's compiled graphs or memory),
between two readings of the reference; its ratios are against the mean of those two readings
(this VM's speed drifts by up to a third over minutes, so a reference read once at the start
misstates ratios measured later).  The first meta-batch's loss and meta-gradient (after the
all-reduce for the workers) of every variant are compared with the reference's (max abs
difference relative to the gradient's max abs value, float32 tolerance ``TOLERANCE``); the
warm-up meta-iterations (compilation included) are timed apart ("warm-up s").  Figures go to stdout and to ``<out>/maml_speed.json`` and
``<out>/maml_speed.md`` (each variant's timing also to ``<out>/rows_so_far.jsonl`` as it ends);
the exit status is 1 when a variant's gradient does not match.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import fmean
from typing import Callable, Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from bench import l2l_taskset, machine, omniglot_or_glyphs, random_split

from metafsl._l2l import learn2learn
from metafsl.algorithms.gradient import use_batch_statistics
from metafsl.algorithms.maml import MAML
from metafsl.data.sampler import EpisodeSampler, TaskBatch
from metafsl.engine.runtime import cpu_cores, tune_cpu_allocator
from metafsl.models import build_backbone

TOLERANCE = 1e-3  # relative max abs difference of float32 meta-gradients


@dataclass(frozen=True)
class Shape:
    name: str
    channels: int
    size: int
    hidden: int
    queries: int
    batch: int
    steps: int
    inner_lr: float
    ways: int = 5
    shots: int = 1


SHAPES = {"omniglot": Shape("Omniglot 5w1s, conv4-64 28x28, mb 32, 1 step, 2nd order", 1, 28, 64, 1, 32, 1, 0.4),
          "mini": Shape("miniImageNet 5w1s 15q, conv4-32 84x84, mb 4, 5 steps, 2nd order", 3, 84, 32, 15, 4, 5,
                        0.01)}
SMOKE = {"omniglot": replace(SHAPES["omniglot"], name="smoke Omniglot-like 16x16", size=16, hidden=8, batch=4),
         "mini": replace(SHAPES["mini"], name="smoke mini-like 16x16", size=16, hidden=8, queries=2, batch=2,
                         steps=2)}


# ----------------------------------------------------------------------------- models and tasks
def metafsl_maml(shape: Shape, backend: str = "l2l") -> MAML:
    torch.manual_seed(0)
    backbone = build_backbone("conv4", shape.channels, shape.size, hidden=shape.hidden)
    return MAML(backbone, shape.ways, inner_lr=shape.inner_lr, inner_steps=shape.steps, first_order=False,
                backend=backend)


def reference_maml(shape: Shape):
    """learn2learn's MAML on its own CNN4Backbone, with metafsl's initial weights."""
    torch.manual_seed(0)
    net = nn.Sequential(build_backbone("conv4", shape.channels, shape.size, hidden=shape.hidden, pool_first=False),
                        nn.Linear(metafsl_maml(shape).head.in_features, shape.ways))
    use_batch_statistics(net)  # as Finn et al. (and metafsl's MAML): per-task batch statistics
    net.load_state_dict(metafsl_maml(shape).l2l_model.module.state_dict())
    return learn2learn().algorithms.MAML(net, lr=shape.inner_lr, first_order=False)


def draw_tasks(shape: Shape, n: int, smoke: bool) -> List[TaskBatch]:
    if shape.channels == 1:
        split = omniglot_or_glyphs(100 if smoke else 1200)[0]
    else:
        split = random_split(6 if smoke else 64, 30, 3, shape.size)
    sampler = EpisodeSampler(split, shape.ways, shape.shots, shape.queries, device=torch.device("cpu"), seed=0)
    return [sampler.sample(shape.batch, train=True) for _ in range(n)]


def half(batch: TaskBatch, rank: int, world: int) -> TaskBatch:
    lo, hi = rank * len(batch) // world, (rank + 1) * len(batch) // world
    return TaskBatch(batch.support_x[lo:hi], batch.support_y[lo:hi], batch.query_x[lo:hi], batch.query_y[lo:hi],
                     batch.n_way, batch.n_shot, batch.n_query)


# ----------------------------------------------------------------------------- variants
def reference_step(shape: Shape):
    maml = reference_maml(shape)

    def step(batch: TaskBatch) -> torch.Tensor:
        losses = []
        for i in range(len(batch)):
            learner = maml.clone()
            for _ in range(shape.steps):
                learner.adapt(nn.functional.cross_entropy(learner(batch.support_x[i]), batch.support_y[i]))
            loss = nn.functional.cross_entropy(learner(batch.query_x[i]), batch.query_y[i])
            (loss / len(batch)).backward()
            losses.append(loss.detach())
        return torch.stack(losses).mean()
    return maml, step


def metafsl_step(shape: Shape, backend: str = "l2l", compile_backend=None, task_threads: int = 1):
    algo = metafsl_maml(shape, backend)
    if compile_backend is not None:
        assert algo.compile_meta_gradient(compile_backend, task_threads=task_threads)
    return algo, lambda batch: algo.meta_backward(batch)[0]


#: variant kind -> (its row's name, runs in 2 workers too as "<kind> + 2 workers")
KINDS = {"reference": "reference learn2learn MAML",
         "default": "metafsl default (backend=l2l; uncompiled, as runs < 5000 iterations)",
         "vmap": "backend=vmap", "compile": "compile (runtime.compile=true)",
         "compile+threads": "compile + task threads (runtime.compile=true runtime.task_threads=<cores>)",
         "vmap+compile": "vmap + compile (backend=vmap runtime.compile=true)"}
WORKER_KINDS = ("default", "compile", "vmap+compile")
ALL_VARIANTS = [k for k in KINDS if k != "reference"] + [f"workers:{k}" for k in WORKER_KINDS]


def build_step(shape: Shape, kind: str, compile_backend: str):
    """(module, step) of one variant kind (see ``KINDS``)."""
    if kind == "reference":
        return reference_step(shape)
    return metafsl_step(shape, "vmap" if kind.startswith("vmap") else "l2l",
                        compile_backend if "compile" in kind else None,
                        cpu_cores() if kind.endswith("threads") else 1)


# ----------------------------------------------------------------------------- timing
def flat_grad(module: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in module.parameters()])


def run_variant(module: nn.Module, step: Callable, tasks: List[TaskBatch], warmup: int,
                reduce: Callable = lambda m, loss: loss) -> dict:
    """Train on ``tasks``: the first ``warmup`` meta-batches (compile included) timed apart."""
    opt = torch.optim.Adam(module.parameters())
    first = {}
    t = time.perf_counter()
    for n, batch in enumerate(tasks):
        if n == warmup:
            warm_s, t = time.perf_counter() - t, time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = reduce(module, step(batch))
        if n == 0:
            first = {"loss": float(loss), "grad": flat_grad(module).clone()}
        opt.step()
    return {"sec_per_iteration": (time.perf_counter() - t) / (len(tasks) - warmup), "warmup_s": warm_s, **first}


def run_in_process(shape: Shape, kind: str, compile_backend: str, tasks: List[TaskBatch], warmup: int) -> dict:
    try:
        module, step = build_step(shape, kind, compile_backend)
        return run_variant(module, step, tasks, warmup)
    except Exception as e:  # a lever that does not run here is reported, not fatal
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"}


def alone(_rank: int, shape: Shape, kind: str, compile_backend: str, tasks_file: str, warmup: int, threads: int,
          result_file: str) -> None:
    """One variant in a process of its own (all the cores): what one run does, and its memory
    (compiled graphs, the allocator's cache) goes back when it ends. In one process, a full run
    grew to 14 GB by the mini shape's rows and the OOM killer stopped it (2026-12-06)."""
    torch.set_num_threads(threads)
    tune_cpu_allocator()
    torch.save(run_in_process(shape, kind, compile_backend, torch.load(tasks_file, weights_only=False), warmup),
               result_file)


# ----------------------------------------------------------------------------- 2 workers (Gloo)
def all_reduce_mean(module: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """One all-reduce of the flattened gradient (and the loss), then the means back into
    ``.grad``; returns the mean loss of the whole meta-batch."""
    params = list(module.parameters())
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params] + [loss.detach().view(1)])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    return flat[-1]


def worker(rank: int, world: int, port: int, shape: Shape, kind: str, compile_backend: str, tasks_file: str,
           warmup: int, threads: int, result_file: str) -> None:
    torch.set_num_threads(threads)
    tune_cpu_allocator()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        tasks = [half(b, rank, world) for b in torch.load(tasks_file, weights_only=False)]
        algo, step = build_step(shape, kind, compile_backend)
        # each worker's step averages over its own half; the all-reduce averages the halves
        dist.barrier()
        result = run_variant(algo, step, tasks, warmup, reduce=all_reduce_mean)
        if rank == 0:
            torch.save(result, result_file)
        dist.barrier()  # both leave together: a rank torn down while the other still talks aborted (SIGABRT)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_new_processes(shape: Shape, kind: str, compile_backend: str, tasks_file: str, warmup: int,
                     world: int) -> dict:
    """A variant in fresh processes: ``alone`` (world 1, all the cores) or ``world`` Gloo workers
    of ``cores // world`` threads each, on the tasks saved in ``tasks_file``; rank 0's result."""
    threads = max(1, cpu_cores() // world)
    result_file = str(Path(tasks_file).with_name("result.pt"))
    common = (shape, kind, compile_backend, tasks_file, warmup, threads, result_file)
    try:
        if world == 1:
            mp.spawn(alone, args=common, nprocs=1)
        else:
            mp.spawn(worker, args=(world, free_port(), *common), nprocs=world)
        return torch.load(result_file, weights_only=False)
    except Exception as e:  # a worker's traceback: its last line says what failed
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"}
    finally:
        Path(result_file).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- one shape
def l2l_sampling_seconds(shape: Shape, smoke: bool, repeats: int = 2) -> float:
    """What the learn2learn TaskDataset pipeline costs per meta-batch (``make bench``'s reference pays it)."""
    split = omniglot_or_glyphs(100 if smoke else 1200)[0] if shape.channels == 1 else \
        random_split(6 if smoke else 64, 30, 3, shape.size)
    taskset = l2l_taskset(split, shape.ways, shape.shots + shape.queries, rotate=shape.channels == 1)
    t = time.perf_counter()
    for _ in range(repeats * shape.batch):
        taskset.sample()
    return (time.perf_counter() - t) / repeats


def compare(result: dict, ref: dict, drawing: Dict[str, float], is_reference: bool) -> None:
    """Gradient and loss against the reference's; speed ratios without and with task drawing
    (the reference with learn2learn's TaskDataset, metafsl with its EpisodeSampler)."""
    if "error" in result or "error" in ref:
        return
    scale = ref["grad"].abs().max().item()
    result["grad_rel_diff"] = (result["grad"] - ref["grad"]).abs().max().item() / scale
    result["loss_diff"] = abs(result["loss"] - ref["loss"])
    result["match"] = result["grad_rel_diff"] <= TOLERANCE and result["loss_diff"] <= TOLERANCE * max(1, ref["loss"])
    result["ratio"] = ref["sec_per_iteration"] / result["sec_per_iteration"]
    own = drawing["reference"] if is_reference else drawing["metafsl"]
    result["ratio_with_drawing"] = (ref["sec_per_iteration"] + drawing["reference"]) / \
        (result["sec_per_iteration"] + own)


def sampler_seconds(shape: Shape, smoke: bool, repeats: int = 3) -> float:
    """What metafsl's EpisodeSampler costs per meta-batch (what its training loop pays)."""
    t = time.perf_counter()
    draw_tasks(shape, repeats, smoke)
    return (time.perf_counter() - t) / repeats


def keep_row(out: str, shape: Shape, row: dict) -> None:
    """Append a variant's timing to ``<out>/rows_so_far.jsonl`` as soon as it is measured: the
    table (with the gradient checks) is written at the end, and a run killed before it (a
    2026-12-06 run was, by the OOM killer) keeps what it measured."""
    line = {"shape": shape.name, **{k: v for k, v in row.items() if k != "grad"}}
    with open(Path(out) / "rows_so_far.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def measure(key: str, shape: Shape, args, tasks_file: str, kind: str, name: str, world: int) -> dict:
    print(f"  {key}: {name} ...", flush=True)
    row = {"variant": name, **in_new_processes(shape, kind, args.compile_backend, tasks_file, args.warmup, world)}
    keep_row(args.out, shape, row)
    return row


def bench_shape(key: str, shape: Shape, args) -> List[dict]:
    """Every variant in fresh processes on the same tasks, each between two readings of the
    reference: this VM's speed drifts by up to a third over minutes (the reference read 0.60 s
    in one run and 0.81 s an hour later), so each ratio is against the mean of the two readings
    around its variant, and the reference row shows the mean and range of all its readings."""
    with tempfile.TemporaryDirectory() as tmp:  # the tasks saved once (mini: ~0.3 GB), read by every process
        tasks_file = os.path.join(tmp, "tasks.pt")
        torch.save(draw_tasks(shape, args.warmup + args.iterations, args.smoke), tasks_file)
        refs, rows = measure_all(key, shape, args, tasks_file)
    return report_shape(shape, args, refs, rows)


def measure_all(key: str, shape: Shape, args, tasks_file: str):
    """The reference's readings and the variants' rows, in the order reference, variant, reference, ..."""
    plan = [(kind, name, 1) for kind, name in KINDS.items() if kind != "reference" and kind in args.variants]
    plan += [(kind, f"{KINDS[kind] if kind != 'default' else 'default'} + 2 workers (Gloo all-reduce)", 2)
             for kind in WORKER_KINDS if f"workers:{kind}" in args.variants]
    refs = [measure(key, shape, args, tasks_file, "reference", KINDS["reference"], 1)]
    rows = []
    for kind, name, world in plan:
        rows.append(measure(key, shape, args, tasks_file, kind, name, world))
        refs.append(measure(key, shape, args, tasks_file, "reference", KINDS["reference"], 1))
    return refs, rows


def report_shape(shape: Shape, args, refs: List[dict], rows: List[dict]) -> List[dict]:
    """Each row's ratio against the mean of the reference's readings around it; rows printed."""
    drawing = {"reference": l2l_sampling_seconds(shape, args.smoke), "metafsl": sampler_seconds(shape, args.smoke)}
    timed = [r["sec_per_iteration"] for r in refs if "error" not in r]
    reference = dict(refs[0])
    if timed:
        reference.update(sec_per_iteration=fmean(timed), readings=timed)
    rows.insert(0, reference)
    for n, row in enumerate(rows):  # row n > 0 ran between readings refs[n - 1] and refs[n]
        around = [r["sec_per_iteration"] for r in refs[n - 1:n + 1] if "error" not in r] if n else timed
        row["reference_s"] = fmean(around) if around else float("nan")
        compare(row, {**refs[0], "sec_per_iteration": row["reference_s"]}, drawing, is_reference=n == 0)
        row["shape"] = shape.name
        row["task_drawing_s"] = drawing["reference" if n == 0 else "metafsl"]
        figure = row["error"] if "error" in row else f"{row['sec_per_iteration']:.3f} s per meta-iteration"
        print(f"    {row['variant']}: {figure}", flush=True)
    for row in rows:
        row.pop("grad", None)
    return rows


# ----------------------------------------------------------------------------- report
def table(rows: List[dict]) -> List[str]:
    lines = ["| shape | variant | s / meta-iteration | reference s (readings around it) | ratio to reference "
             "| ratio incl. task drawing | warm-up s | grad rel. diff | loss diff | match |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['variant']} | failed: {r['error']} | | | | | | | |")
            continue
        ref = (f"mean of {len(r['readings'])}: {min(r['readings']):.3f}-{max(r['readings']):.3f}"
               if "readings" in r else f"{r.get('reference_s', float('nan')):.3f}")
        lines.append(f"| {r['shape']} | {r['variant']} | {r['sec_per_iteration']:.3f} | {ref} | "
                     f"{r.get('ratio', 1):.2f}x | {r.get('ratio_with_drawing', 1):.2f}x | "
                     f"{r['warmup_s']:.1f} | {r.get('grad_rel_diff', 0):.1e} | {r.get('loss_diff', 0):.1e} | "
                     f"{'yes' if r.get('match', True) else 'NO'} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="evidence dir (maml_speed.json, maml_speed.md)")
    ap.add_argument("--iterations", type=int, default=10, help="timed meta-iterations per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed meta-iterations first (compilation included)")
    ap.add_argument("--shapes", default="omniglot,mini", help="comma list of: omniglot, mini")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: a quick check)")
    ap.add_argument("--variants", default=",".join(ALL_VARIANTS),
                    help="comma list of the variants to run besides the reference (default: all of them)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 2 iterations: seconds (figures meaningless)")
    args = ap.parse_args(argv)
    args.variants = args.variants.split(",")
    unknown = set(args.variants) - set(ALL_VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    if args.smoke:
        args.iterations, args.warmup = min(args.iterations, 2), 1
    tune_cpu_allocator()  # what every metafsl command does (runtime.cpu_allocator_cache)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows_so_far.jsonl").unlink(missing_ok=True)  # this run's rows only
    print(f"Machine: {machine(torch.device('cpu'))}", flush=True)
    t0, rows = time.perf_counter(), []
    for key in args.shapes.split(","):
        rows += bench_shape(key, (SMOKE if args.smoke else SHAPES)[key], args)
    lines = table(rows)
    notes = [f"{r['shape']}: drawing a meta-batch of tasks takes {r['task_drawing_s']:.3f} s with learn2learn's "
             f"TaskDataset (scripts/bench.py's reference) and {rows[n + 1]['task_drawing_s']:.3f} s with metafsl's "
             f"EpisodeSampler; 'ratio incl. task drawing' adds them to each side." for n, r in enumerate(rows)
             if r["variant"] == KINDS["reference"]]
    notes.append("Each variant runs in fresh processes (one of all the cores, or 2 workers) between two readings "
                 "of the reference, and its ratios are against the mean of those two readings.")
    header = [f"Machine: {machine(torch.device('cpu'))}; workers: 2 x {max(1, cpu_cores() // 2)} threads; "
              f"{args.iterations} timed meta-iterations after "
              f"{args.warmup} warm-up; compile backend {args.compile_backend}; total "
              f"{time.perf_counter() - t0:.0f} s" + ("; SMOKE (figures meaningless)" if args.smoke else "")]
    print("\n" + "\n".join(header + [""] + lines + [""] + notes))
    (out / "maml_speed.json").write_text(json.dumps({"header": header[0], "rows": rows}, indent=1))
    (out / "maml_speed.md").write_text("\n".join(header + [""] + lines + [""] + notes) + "\n")
    return 0 if all(r.get("match", False) for r in rows if "error" not in r) else 1


if __name__ == "__main__":
    sys.exit(main())
