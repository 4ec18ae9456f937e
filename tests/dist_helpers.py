"""Helpers of tests/test_distributed.py.

The 2-worker equivalence: a few training steps of ProtoNet, second-order MAML and Baseline on
fixed tiny task batches, each worker on its half of every meta-batch, gradients averaged by
``metafsl.engine.distributed.average_gradients``; ``train`` with the default world does the same
steps in one process on the whole meta-batches."""
from __future__ import annotations

import torch
from torch import nn

from metafsl.data.batches import LabelledBatch
from metafsl.data.sampler import TaskBatch
from metafsl.engine.callbacks import Callback

STEPS = 3
#: method -> meta-batch size of the single process (each of 2 workers takes half: ProtoNet, a
#: one-episode method, takes one episode per worker)
SIZES = {"protonet": 2, "maml": 4, "baseline": 4}


class TinyBody(nn.Module):
    def __init__(self, out: int = 6):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, out))
        self.out_features = out

    def forward(self, x):
        return self.net(x)


def learner(name: str):
    from metafsl.algorithms.baseline import Baseline
    from metafsl.algorithms.maml import MAML
    from metafsl.algorithms.protonet import ProtoNet

    torch.manual_seed(0)
    if name == "protonet":
        return ProtoNet(TinyBody())
    if name == "maml":  # second order: differentiates through the inner step
        return MAML(TinyBody(3), n_way=3, inner_lr=0.5, inner_steps=1, first_order=False)
    algo = Baseline(TinyBody(), batch_size=8)
    algo.prepare_training(5)
    return algo


def meta_batch(name: str, step: int, size: int):
    """The whole meta-batch of ``step``: ``size`` episodes (a labelled batch of 4 * size images for
    the baseline)."""
    g = torch.Generator().manual_seed(100 + step)
    if name == "baseline":
        return LabelledBatch(torch.randn(4 * size, 1, 4, 4, generator=g), torch.randint(5, (4 * size,), generator=g))
    n_way, shot, query = 3, 2, 2
    sy = torch.arange(n_way).repeat_interleave(shot).expand(size, -1)
    qy = torch.arange(n_way).repeat_interleave(query).expand(size, -1)
    centres = torch.randn(size, n_way, 1, 4, 4, generator=g) * 2
    sx = centres[:, sy[0]] + 0.3 * torch.randn(size, n_way * shot, 1, 4, 4, generator=g)
    qx = centres[:, qy[0]] + 0.3 * torch.randn(size, n_way * query, 1, 4, 4, generator=g)
    return TaskBatch(sx, sy.contiguous(), qx, qy.contiguous(), n_way, shot, query)


def part(batch, rank: int, world: int):
    """Worker ``rank``'s share of a meta-batch."""
    if isinstance(batch, LabelledBatch):
        n = len(batch) // world
        return LabelledBatch(batch.x[rank * n:(rank + 1) * n], batch.y[rank * n:(rank + 1) * n])
    n = batch.support_x.shape[0] // world
    cut = slice(rank * n, (rank + 1) * n)
    return TaskBatch(batch.support_x[cut], batch.support_y[cut], batch.query_x[cut], batch.query_y[cut],
                     batch.n_way, batch.n_shot, batch.n_query)


def train(name: str, size: int, rank: int = 0, world=None):
    """STEPS steps on this worker's share of meta-batches of ``size`` episodes; the final weights."""
    from metafsl.engine import distributed

    world = world or distributed.World()
    algo = learner(name)
    optimizer = torch.optim.SGD(algo.parameters(), lr=0.5)
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        algo.meta_backward(part(meta_batch(name, step, size), rank, world.size))
        distributed.average_gradients(algo, world)
        optimizer.step()
    return {k: v.detach().clone() for k, v in algo.state_dict().items()}


def worker(rank: int, store: str, out: str) -> None:
    """One of 2 gloo workers (``torch.multiprocessing``): every method, weights to ``out``."""
    import torch.distributed as dist

    from metafsl.engine.distributed import World

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        world = World(rank, 2, rank, 2)
        torch.save({name: train(name, size, rank, world) for name, size in SIZES.items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


class KillAt(Callback):
    """A callback (rank 0's) that kills its own worker with SIGKILL at the end of ``iteration``
    of the first launch (not after the launcher's restart)."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def on_event(self, event: str, iteration: int) -> None:
        import os
        import signal

        if event == "iteration_end" and iteration == self.iteration \
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
