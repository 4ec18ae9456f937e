"""Which worker this process is in a ``torch.distributed`` run, and the work it takes.

Outside a process group (the normal case) this process is rank 0 of a world of 1: ``share``
hands it everything and ``gather_in_order`` returns its part as it is, with no communication.
Inside one, work is split into contiguous blocks in rank order, so concatenating the ranks'
results in rank order (``gather_in_order``) gives them back in the original order.  It needs
torch alone (no other metafsl module).
"""
from __future__ import annotations

from typing import Any, List

import torch
import torch.distributed as dist


def active() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    """How many workers share the work (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This worker's rank, 0..world()-1 (0 outside a process group)."""
    return dist.get_rank() if active() else 0


def share(n: int, unit: int = 1, of: int | None = None, at: int | None = None) -> slice:
    """The contiguous block of ``range(n)`` that worker ``at`` (default: this one) of ``of``
    (default: ``world()``) takes: whole ``unit``s (the last one may be short), spread as evenly
    as possible, lower ranks first; the blocks of ranks 0, 1, ... cover ``range(n)`` in order."""
    of, at = world() if of is None else of, rank() if at is None else at
    units = -(-n // unit)
    base, extra = divmod(units, of)
    first = at * base + min(at, extra)
    return slice(min(n, first * unit), min(n, (first + base + (at < extra)) * unit))


def gather(obj: Any) -> List[Any]:
    """Every worker's ``obj`` (picklable), in rank order, on every worker (``[obj]`` alone).
    Under NCCL each worker must have set its own GPU first (``torch.cuda.set_device``)."""
    if not active():
        return [obj]
    out: List[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def gather_in_order(part: torch.Tensor, n: int, unit: int = 1) -> torch.Tensor:
    """The ``n`` rows that the workers computed in blocks (``share(n, unit)``), put back in order
    on every worker: each worker's ``part`` holds the rows of its block (on the CPU)."""
    if not active():
        return part
    parts = gather(part.cpu())
    for r, got in enumerate(parts):
        block = share(n, unit, len(parts), r)
        if len(got) != block.stop - block.start:
            raise RuntimeError(f"rank {r} returned {len(got)} rows for its block {block.start}..{block.stop} of {n}")
    return torch.cat(parts)
