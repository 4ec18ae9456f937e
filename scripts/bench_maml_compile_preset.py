"""A MAML preset's training step compiled (``runtime.compile=true``) against uncompiled, side by side.

    python scripts/bench_maml_compile_preset.py docs/evidence/maml_compile_preset \\
        --experiment maml_omniglot_cpu_5w1s --data-dir ../shared/data         # the real run
    python scripts/bench_maml_compile_preset.py /tmp/mcp --smoke                # seconds (figures meaningless)
    python scripts/bench_maml_compile_preset.py /tmp/mcp --smoke --compile-backend inductor  # minutes

The learner, its options (MAML++'s LSLR, MSL, derivative-order annealing) and the training
episodes come from the preset, as ``metafsl train experiment=<preset>`` builds them (no other
override than ``runtime.compile=false``, ``--data-dir`` and ``--override``).  Each MAML++ phase
is timed apart, because it is a different computation (and a different compiled function):

- ``early``: the schedules' start (iteration 0: first order with the multi-step loss where the
  preset anneals them);
- ``late``: after both schedules (``max(msl_iterations, first_order_until)``): second order, the
  last step's loss.

In each phase both variants start from the same weights and counters and train (Adam at the
preset's rate) on the same pre-drawn meta-batches: ``--warmup`` untimed meta-iterations
(compilation included, its seconds reported as "warm-up s"), then ``--iterations`` timed ones;
"paid back after" is the compiled warm-up's extra time over the time saved per iteration (to
weigh against the preset's ``trainer.iterations`` and ``runtime.AUTO_COMPILE_ITERATIONS``).
The first meta-gradients are compared (max abs difference relative to the largest value, float32:
second-order gradients move by about 1e-2 with reduction order alone, see docs/benchmarks.md).
Figures go to stdout and ``<out>/maml_compile_preset.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from metafsl import api  # noqa: E402
from metafsl.data import load_dataset  # noqa: E402
from metafsl.data.sampler import TaskBatch  # noqa: E402
from metafsl.engine import components  # noqa: E402

#: a few seconds on the built-in glyphs: one tiny meta-batch, torch.compile's cheap eager backend
SMOKE = ["dataset=glyphs", "~dataset.rotations", "~dataset.split", "dataset.n_classes=40", "trainer.meta_batch_size=2", "backbone.hidden=8"]


def configuration(args) -> Dict:
    overrides = [f"experiment={args.experiment}", "runtime.compile=false", "device=cpu", *(SMOKE if args.smoke else []),
                 *args.override]
    if args.data_dir:
        overrides.append(f"paths.data_dir={args.data_dir}")
    return api.resolved(api.compose("train", overrides))


def learner(cfg: Dict, ds, compiled: bool, backend: str):
    torch.manual_seed(int(cfg.get("seed", 0)))  # the same initial weights for both variants
    algo = components.build(cfg, dataset=ds, initialise=True).algorithm
    if compiled and not algo.compile_meta_gradient(backend):
        raise SystemExit(f"{cfg['name']}: its MAML does not compile (recompute_inner?)")
    return algo.train()


def draw_tasks(cfg: Dict, ds, algo, n: int) -> List[TaskBatch]:
    preprocess = components.make_preprocess(cfg["dataset"], ds, algo.backbone)
    stream = components.build_train_stream(algo, ds["train"], cfg["episode"], torch.device("cpu"),
                                           int(cfg.get("seed", 0)), preprocess)
    return [stream.sample(int(cfg["trainer"]["meta_batch_size"]), train=True) for _ in range(n)]


def set_schedules(algo, iteration: int) -> None:
    """Both MAML++ counters at ``iteration`` (as a run resumed there)."""
    for name in ("msl_iteration", "da_iteration"):
        if hasattr(algo, name):
            getattr(algo, name).fill_(iteration)


def run(algo, tasks: List[TaskBatch], warmup: int, lr: float) -> dict:
    opt = torch.optim.Adam([p for p in algo.parameters() if p.requires_grad], lr=lr)
    first, t = None, time.perf_counter()
    for n, batch in enumerate(tasks):
        if n == warmup:
            warm_s, t = time.perf_counter() - t, time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = algo.meta_backward(batch)
        if n == 0:
            first = {"loss": float(loss), "grad": torch.cat([p.grad.flatten() for p in algo.parameters()
                                                             if p.grad is not None])}
        opt.step()
    return {"sec_per_iteration": (time.perf_counter() - t) / (len(tasks) - warmup), "warmup_s": warm_s, **first}


def phase(cfg: Dict, ds, name: str, iteration: int, args) -> dict:
    rows = {}
    tasks = None
    for variant in ("uncompiled", "compiled"):
        algo = learner(cfg, ds, variant == "compiled", args.compile_backend)
        tasks = tasks or draw_tasks(cfg, ds, algo, args.warmup + args.iterations)
        set_schedules(algo, iteration)
        print(f"  {name} (iteration {iteration}): {variant} ...", flush=True)
        rows[variant] = run(algo, tasks, args.warmup, float(cfg["trainer"]["optimizer"]["lr"]))
        rows[variant]["counters_after"] = {k: int(getattr(algo, k)) for k in ("msl_iteration", "da_iteration")
                                           if hasattr(algo, k)}
    ref, got = rows["uncompiled"], rows["compiled"]
    scale = ref["grad"].abs().max().item()
    out = {"phase": name, "iteration": iteration, "grad_rel_diff": (got.pop("grad") - ref.pop("grad")).abs().max().item()
           / scale, "loss_diff": abs(got["loss"] - ref["loss"]), **rows,
           "ratio": ref["sec_per_iteration"] / got["sec_per_iteration"]}
    saving = ref["sec_per_iteration"] - got["sec_per_iteration"]  # the warm-up's extra time, paid back after:
    out["break_even_iterations"] = (got["warmup_s"] - ref["warmup_s"]) / saving if saving > 0 else None
    print(f"    uncompiled {ref['sec_per_iteration']:.3f} s, compiled {got['sec_per_iteration']:.3f} s per "
          f"meta-iteration: {out['ratio']:.2f}x (compile warm-up {got['warmup_s']:.0f} s, paid back after "
          f"{out['break_even_iterations'] or float('inf'):.0f} iterations; first gradients' "
          f"rel. diff {out['grad_rel_diff']:.1e})", flush=True)
    return out


def phases(cfg: Dict) -> Dict[str, int]:
    algo = cfg["algo"]
    late = max(int(algo.get("msl_iterations", 0)) if algo.get("multi_step_loss") else 0,
               int(algo.get("first_order_until", 0) or 0))
    return {"early": 0, "late": late} if late else {"plain": 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="evidence dir (maml_compile_preset.json)")
    ap.add_argument("--experiment", default="maml_omniglot_cpu_5w1s", help="the preset (conf/experiment/)")
    ap.add_argument("--data-dir", default=None, help="paths.data_dir (where omniglot/ is)")
    ap.add_argument("--iterations", type=int, default=20, help="timed meta-iterations per variant and phase")
    ap.add_argument("--warmup", type=int, default=2, help="untimed meta-iterations first (compilation included)")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; eager, the default with --smoke: a quick check)")
    ap.add_argument("--override", action="append", default=[], help="another config override (repeatable)")
    ap.add_argument("--smoke", action="store_true", help="glyphs, tiny model, 1 + 1 iterations (figures meaningless)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.iterations, args.warmup = 1, 1
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    cfg = configuration(args)
    ds = load_dataset(cfg["dataset"], cfg["paths"])
    print(f"{args.experiment}: torch {torch.__version__}, {torch.get_num_threads()} threads, compile backend "
          f"{args.compile_backend}" + (" (SMOKE: figures meaningless)" if args.smoke else ""), flush=True)
    results = [phase(cfg, ds, name, iteration, args) for name, iteration in phases(cfg).items()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"experiment": args.experiment, "smoke": args.smoke, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "compile_backend": args.compile_backend,
              "iterations": args.iterations, "warmup": args.warmup, "overrides": args.override, "phases": results}
    (out / "maml_compile_preset.json").write_text(json.dumps(record, indent=1))
    print(f"Written: {out / 'maml_compile_preset.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
