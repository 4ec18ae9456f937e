"""One training on several worker processes: what each worker is (``World``) and what the
training recipe exchanges between them, on ``torch.distributed`` (Gloo on CPUs, NCCL on GPUs).

- The meta-batch of B tasks is split over the N workers (B/N each); worker ``r`` draws its tasks
  from a stream seeded by ``rank_seed(seed, r)`` (rank 0: the run seed itself, so that a
  one-worker run draws exactly the tasks of a single process).
- After ``meta_backward`` the gradients (and the batch-norm running statistics) are averaged with
  one all-reduce of all of them flattened into one tensor (``average_gradients``).  Not DDP: its hooks fire during ``backward`` of a module
  called once per step, while the MAML family differentiates through inner loops on clones of the
  learner (learn2learn, ``torch.func``), backwards several times per step and, for a meta-batch,
  once per task; averaging the finished ``.grad`` once per step fits every learner the same way
  and costs one collective per step.
- Decisions that must be the same on every worker (stop on a signal, out of the time budget,
  checkpoint now) are all-reduced once per iteration (``agree``); a worker's failure before
  training is shared with the others (``first_error``) so that they all stop with its sentence.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from metafsl.engine import ranks
from metafsl.errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place among the workers of one training (1 worker: a plain process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def env_world() -> Optional[World]:
    """The world a launcher (the inner launch, an external ``torchrun``) set in the environment;
    None outside one."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    env = os.environ
    return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                 int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))


def restarted() -> bool:
    """Whether the elastic launcher restarted the workers after one of them died."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of worker ``rank``'s task stream: ``seed`` for rank 0, else derived from both."""
    if rank == 0:
        return int(seed)
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


def backend_for(setting: str, device: str, local_workers: int = 1) -> str:
    """``distributed.backend``: auto is nccl when every worker of this machine gets its own GPU,
    else gloo (which also carries CUDA tensors, e.g. two workers sharing one GPU)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if setting == "nccl" and not gpus:
        raise UserError("distributed.backend=nccl needs a CUDA GPU per worker and none is available here; "
                        "use distributed.backend=gloo (or auto).")
    if setting != "auto":
        return setting
    return "nccl" if gpus >= local_workers and not str(device).startswith("cpu") else "gloo"


def worker_device(device: str, world: World) -> str:
    """``device=auto`` in a worker: its own GPU (``cuda:<local rank>``) when GPUs exist, else cpu."""
    if device == "auto" and torch.cuda.is_available():
        return f"cuda:{world.local_rank % torch.cuda.device_count()}"
    return device


def check(cfg: Dict[str, Any], world_size: int) -> None:
    """What a distributed training needs, checked before any work (one sentence each)."""
    node = cfg.get("distributed") or {}
    backend_for(str(node.get("backend", "auto")), str(cfg.get("device", "auto")))
    batch = int(cfg["trainer"]["meta_batch_size"])
    if world_size > 1 and batch > 1 and batch % world_size:
        raise UserError(f"trainer.meta_batch_size={batch} cannot be split evenly over {world_size} workers; "
                        f"use a meta-batch that is a multiple of {world_size} or a number of workers that "
                        f"divides {batch}.")
    if int(node.get("nnodes", 1)) > 1 and not node.get("rdzv_endpoint"):
        raise UserError("distributed.nnodes > 1 needs distributed.rdzv_endpoint=<host:port> of the first "
                        "machine, the same on every machine.")
    if int(node.get("node_rank", 0)) >= int(node.get("nnodes", 1)):
        raise UserError(f"distributed.node_rank must be below distributed.nnodes={node.get('nnodes', 1)} "
                        f"(got {node.get('node_rank')}).")


def resumed_seed(seed: int, rank: int, iteration: int) -> int:
    """The stream of worker ``rank`` > 0 resumed from a checkpoint written by another number of
    workers (which holds rank 0's stream only): derived from the seed, the rank and the iteration."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(rank), int(iteration)]).generate_state(1)[0])


def tasks_per_worker(meta_batch_size: int, world: World) -> int:
    """A worker's share of the meta-batch (one-episode methods: one each, N per step)."""
    return max(1, int(meta_batch_size) // world.size)


def join(cfg: Dict[str, Any], world: World, timeout_s: float = 1800) -> None:
    """Join the process group the launcher set up (``MASTER_ADDR``/``MASTER_PORT`` in the env)."""
    if world.size <= 1 or dist.is_initialized():
        return
    backend = backend_for(str((cfg.get("distributed") or {}).get("backend", "auto")), str(cfg["device"]),
                          world.local_size)
    if backend == "nccl":
        torch.cuda.set_device(torch.device(cfg["device"]))
    timeout = timedelta(seconds=timeout_s)
    store = _attempt_store(world, timeout)
    if store is None:  # an external launcher's env:// (torchrun's static rendezvous, SLURM tasks)
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.size, timeout=timeout)


def _attempt_store(world: World, timeout: timedelta):
    """The elastic agent's store, under a prefix of its own for each restart, or None.

    The agent keeps one store for all the restarts of a launch, and torch's ``env://`` joins it
    without a per-attempt prefix (it assumes a new store per restart): the workers of a restart
    then read the dead workers' Gloo addresses and fail to connect.  Measured here: every restart
    after a ``kill -9`` failed that way until the prefix was added."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world.size,
                           is_master=False, timeout=timeout)
    return dist.PrefixStore(f"metafsl/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", client)


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _flat_device(tensors: Sequence[torch.Tensor]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


def average_gradients(module: torch.nn.Module, world: World) -> None:
    """Average every parameter's ``.grad`` and every floating-point buffer (batch-norm running
    statistics, updated by this step's forward passes) over the workers, in one all-reduce of one
    flat tensor (a parameter without a gradient on this worker counts as zero)."""
    if not world.active:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not grads and not buffers:
        return
    flat = torch.cat([t.reshape(-1) for t in [*grads, *buffers]])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world.size
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    with torch.no_grad():
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def mean(values: Sequence[float], world: World, device: torch.device) -> List[float]:
    """The workers' average of each value (one all-reduce)."""
    if not world.active:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / world.size).tolist()


def agree(flags: Sequence[float], world: World, device: torch.device) -> List[float]:
    """The largest value of each flag over the workers (one all-reduce): a stop asked anywhere is
    a stop everywhere; rank 0's decisions are passed as its value with 0 elsewhere."""
    if not world.active:
        return [float(f) for f in flags]
    t = torch.tensor([float(f) for f in flags], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def broadcast_module(module: torch.nn.Module, world: World) -> None:
    """Rank 0's parameters and buffers on every worker (after setup and resume)."""
    if not world.active:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def share(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every worker."""
    if not world.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def first_error(error: Optional[BaseException], world: World) -> None:
    """Raise on every worker the first worker's user error (a worker that failed before training
    stops them all with its sentence); nothing when none failed."""
    if not world.active:
        if error is not None:
            raise error
        return
    found = [e for e in ranks.gather(_describe(error)) if e is not None]
    if found:
        message, code = found[0]
        exc = UserError(message)
        exc.exit_code, exc.shared = code, True
        raise exc


def _describe(error: Optional[BaseException]):
    if error is None:
        return None
    return str(error), int(getattr(error, "exit_code", 2))
