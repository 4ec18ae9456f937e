"""Evaluation cases scored by one process and by workers of a Gloo process group
(tests/test_dist_eval.py): tiny untrained learners on a tiny random split, one per evaluation
path (embed-once, episode loop, one episode at a time) and MANN (random draws at test time).

A worker (``worker``) runs every case and saves what it got to ``<out>/rank<r>.pt``; this module
imports nothing from the tests so that a spawned worker loads it cheaply.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import torch


def split():
    from metafsl.data.base import FewShotSplit

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (72, 1, 12, 12), generator=g, dtype=torch.uint8)
    return FewShotSplit(images, torch.arange(8).repeat_interleave(9), [f"c{i}" for i in range(8)])


def learner(name: str):
    from metafsl.algorithms.maml import MAML
    from metafsl.algorithms.mann import MANN
    from metafsl.algorithms.protonet import ProtoNet
    from metafsl.models import build_backbone

    torch.manual_seed(0)
    body = build_backbone("conv4", 1, 12, hidden=4, layers=2)
    if name == "maml":
        return MAML(body, 3, test_inner_steps=1)
    if name == "mann":
        return MANN(body, 3, controller_size=8, memory_slots=6, memory_size=4, read_heads=2)
    algo = ProtoNet(body)
    with torch.no_grad():  # non-trivial running statistics
        algo.train()
        algo.backbone(torch.rand(16, 1, 12, 12) * 2)
    return algo


#: name -> (learner, EvalSpec arguments): odd numbers of episodes; the embed-once path (protonet),
#: one episode at a time with fine-tuning (its augmentations seeded per episode), the episode loop
#: in batches of 2 (4 batches, 2 per worker, the last one short) and in one batch of 16 (the
#: second worker has none), MANN (random support orders at test time)
CASES: Dict[str, tuple] = {
    "protonet": ("protonet", dict(episodes=7, batch_episodes=2)),
    "protonet_tuned": ("protonet", dict(episodes=5, bn="transductive", finetune_steps=1, finetune_lr=0.5)),
    "maml": ("maml", dict(episodes=7, batch_episodes=2)),
    "maml_one_batch": ("maml", dict(episodes=3)),
    "mann": ("mann", dict(episodes=5, batch_episodes=2)),
}


class Recorder:
    """The progress events an evaluation reports."""

    def __init__(self):
        self.events: List[tuple] = []

    def on_eval_start(self, description: str, episodes: int) -> None:
        self.events.append(("start", episodes))

    def on_eval_advance(self, episodes: int) -> None:
        self.events.append(("advance", episodes))

    def on_eval_end(self) -> None:
        self.events.append(("end",))


def score(case: str, rng: int, callbacks=None) -> dict:
    """One case's per-episode predictions and its test scores, the global generator seeded with
    ``rng`` before the evaluation."""
    from metafsl.engine.evaluate import EvalSpec, predict_episodes, scores

    name, kw = CASES[case]
    algo, data = learner(name), split()
    torch.manual_seed(rng)
    preds = predict_episodes(algo, data, EvalSpec(3, 1, 2, seed=5, **kw), callbacks=callbacks)
    return {"predicted": preds.predicted, "classes": preds.classes, "scores": scores(preds)}


def worker(rank: int, world: int, out: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))  # a broken collective fails, never hangs
    try:
        got = {}
        for case in CASES:
            rec = Recorder()  # each worker's global generator in another state:
            got[case] = {**score(case, 100 + rank, rec), "events": rec.events}
        torch.save(got, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
