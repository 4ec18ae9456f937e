"""Pretrained-backbone pipelines (issue 27's acceptance): frozen SimpleShot, episodic meta-training
with ProtoNet, and meta-training + test-time fine-tuning, against conv4 ProtoNet from scratch.

    make bench-pretrained                                   # ~25 min on a 2-core CPU at the defaults
    make bench-pretrained BENCH_ARGS="--minutes 1 --episodes 300"     # smaller
    python scripts/bench_pretrained.py --out docs/evidence/pretrained --minutes 2 --episodes 600
    python scripts/bench_pretrained.py --out /tmp/pt --smoke   # glyphs, tiny budgets: seconds

On tiny-fewshot (``--data``, miniImageNet CSV layout, 84x84 RGB), for 5-way 1-shot and 5-shot
(``--shots``) and the same seeded test episodes (``eval.seed``, 15 queries, ``--episodes``):

- conv4 + ProtoNet from scratch, meta-trained for ``--minutes`` (``trainer.max_minutes``);
- a torchvision (``--torchvision``, resnet18) and a timm backbone (``--timm``, resnet10t), randomly
  initialised (``--weights``; no pretrained weights can be downloaded on the benchmark machine;
  pass ``--weights imagenet`` where they are cached), each
  (a) frozen + SimpleShot, no training (``trainer.iterations=0``),
  (b) meta-trained with ProtoNet for ``--minutes``,
  (c) (b) tested with test-time fine-tuning (``eval.finetune_steps``/``eval.finetune_lr``, passed
      only when this metafsl has them: otherwise the row says so), on the first
      ``--finetune-episodes`` of the same episodes (fine-tuning costs steps per episode).

Each run goes through the library (``metafsl.api.train`` / ``evaluate``: what the CLI runs) in a
run dir under ``--out``/runs (an existing one is reused).  Time per 600 test episodes: the test's
seconds scaled to 600 episodes.  Results: ``pretrained_bench.md`` (a table) and
``pretrained_bench.json`` in ``--out``; the table is printed too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from bench import machine

from metafsl import api
from metafsl.engine.run_dir import RESULT

TINY_FEWSHOT = REPO.parent / "shared" / "data" / "tiny-fewshot"


def arguments(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="evidence dir (tables, json, runs/)")
    p.add_argument("--data", type=Path, default=TINY_FEWSHOT, help="miniImageNet-CSV-layout folder")
    p.add_argument("--minutes", type=float, default=2.0, help="meta-training budget of each trained run")
    p.add_argument("--episodes", type=int, default=600, help="test episodes of each evaluation")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--torchvision", default="resnet18", help="torchvision architecture (backbone=torchvision)")
    p.add_argument("--timm", default="resnet10t", help="timm model name (backbone=timm)")
    p.add_argument("--weights", default="none", help="backbone.weights of the torchvision/timm backbones")
    p.add_argument("--finetune-steps", type=int, default=10, help="eval.finetune_steps of rows (c)")
    p.add_argument("--finetune-lr", type=float, default=0.01, help="eval.finetune_lr of rows (c)")
    p.add_argument("--finetune-episodes", type=int, default=100,
                   help="test episodes of rows (c) (the first of the same seeded sequence; fine-tuning is slow)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--smoke", action="store_true", help="glyphs, a few iterations and episodes: seconds")
    return p.parse_args(argv)


def data_overrides(args):
    if args.smoke:
        return ["dataset=glyphs", "dataset.n_classes=40", "dataset.examples_per_class=20", "dataset.image_size=28"]
    if not args.data.exists():
        sys.exit(f"{args.data} does not exist; pass --data <miniImageNet CSV layout> or --smoke.")
    return ["dataset=mini_imagenet", f"dataset.root={args.data}", "dataset.format=csv",
            f"dataset.image_size={args.image_size}"]


def budget(args):
    if args.smoke:
        return ["trainer.iterations=2", "trainer.val_every=2", "trainer.val_episodes=2"]
    return ["trainer.iterations=1000000", f"trainer.max_minutes={args.minutes}",
            "trainer.val_every=1000000", "trainer.val_episodes=50"]


def has_finetuning() -> bool:
    return "finetune_steps" in (api.compose("test").get("eval") or {})


def backbones(args):
    """(label, backbone overrides) of the torchvision and timm backbones."""
    common = [f"backbone.weights={args.weights}"]
    return [(f"torchvision {args.torchvision}", ["backbone=torchvision", f"backbone.model={args.torchvision}", *common]),
            (f"timm {args.timm}", ["backbone=timm", f"backbone.model={args.timm}", *common])]


def train(run: Path, overrides):
    if (run / "summary.json").exists():
        print(f"reusing {run}", flush=True)
        return run
    print(f"metafsl train {' '.join(overrides)} hydra.run.dir={run}", flush=True)
    t0 = time.perf_counter()
    api.train(api.compose("train", overrides), run, overrides=overrides)
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return run


def test(run: Path, name: str, shot: int, args, extra=(), episodes=None):
    """The test record of ``run`` on the benchmark's test episodes (reused when written)."""
    out = run / "tests" / name
    if not (out / RESULT).exists():
        episodes = episodes or args.episodes
        overrides = [f"episode=5w{shot}s", "episode.test.n_query=15", f"eval.episodes={episodes}", *extra]
        api.evaluate(run, overrides, checkpoint="last", out_dir=out, overwrite=True)
    record = json.loads((out / RESULT).read_text())
    return {"acc": record["acc"], "ci95": record["ci95"], "episodes": record["episodes"],
            "seconds_per_600": round(record["seconds"] * 600 / record["episodes"], 2)}


def rows_for_shot(shot: int, args, runs: Path, data, finetune: bool):
    episode = [f"episode=5w{shot}s", "episode.train.n_query=15", "test=false"]
    rows = []
    conv4 = train(runs / f"conv4_protonet_{shot}s", ["algo=protonet", "backbone=conv4", *data, *episode, *budget(args)])
    rows.append(("conv4", "ProtoNet from scratch", test(conv4, f"5w{shot}s", shot, args)))
    for label, bb in backbones(args):
        tag = label.replace(" ", "_")
        frozen = train(runs / f"{tag}_simpleshot",  # no training: one run serves every shot
                       ["algo=simpleshot", *bb, "backbone.freeze=true", "trainer.iterations=0", *data, *episode])
        rows.append((label, "(a) frozen + SimpleShot", test(frozen, f"5w{shot}s", shot, args)))
        meta = train(runs / f"{tag}_protonet_{shot}s", ["algo=protonet", *bb, *data, *episode, *budget(args)])
        rows.append((label, "(b) meta-trained ProtoNet", test(meta, f"5w{shot}s", shot, args)))
        if finetune:
            extra = [f"eval.finetune_steps={args.finetune_steps}", f"eval.finetune_lr={args.finetune_lr}"]
            rows.append((label, "(c) meta-trained + fine-tuned",
                         test(meta, f"5w{shot}s_ft", shot, args, extra, min(args.episodes, args.finetune_episodes))))
        else:
            rows.append((label, "(c) meta-trained + fine-tuned", None))
    return [{"shot": shot, "backbone": b, "pipeline": p, "result": r} for b, p, r in rows]


def table(rows, args, finetune: bool) -> str:
    lines = [f"Machine: {machine(torch.device('cpu'))}",
             f"Data: {'glyphs (smoke)' if args.smoke else args.data}; meta-training budget {args.minutes} min "
             f"per run; backbone.weights={args.weights}; the same seeded 5-way 15-query test episodes; fine-tuning: "
             f"eval.finetune_steps={args.finetune_steps}, eval.finetune_lr={args.finetune_lr}.", "",
             "| shots | backbone | pipeline | test acc (%) | episodes | s / 600 episodes |", "|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        acc = f"{res['acc']:.2f} ± {res['ci95']:.2f}" if res else \
            "n/a (this metafsl has no eval.finetune_steps)" if not finetune else "-"
        secs = f"{res['seconds_per_600']:.1f}" if res else "-"
        count = res["episodes"] if res else "-"
        lines.append(f"| {r['shot']} | {r['backbone']} | {r['pipeline']} | {acc} | {count} | {secs} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.episodes, args.minutes = min(args.episodes, 4), 0.0
    args.out.mkdir(parents=True, exist_ok=True)
    data, finetune = data_overrides(args), has_finetuning()
    rows = [row for shot in args.shots for row in rows_for_shot(shot, args, args.out / "runs", data, finetune)]
    text = table(rows, args, finetune)
    (args.out / "pretrained_bench.md").write_text(text)
    (args.out / "pretrained_bench.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                                "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
