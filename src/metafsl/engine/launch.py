"""Start the workers of one distributed training from inside ``metafsl train``: PyTorch's elastic
launcher (``torch.distributed.launcher.api.elastic_launch``, the machinery behind ``torchrun``)
with its c10d rendezvous; configured by ``distributed.*`` under torchrun's names.

The workers run a function the caller gives (``metafsl.api`` passes its training) and return
``(error sentence, exit code)`` or ``None``; the launcher's own failures (nobody else joined in
time, every restart used up) become one sentence.  Outside a launcher a config asking for one
worker starts nothing (``needs_launch``).
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import uuid
from typing import Any, Callable, Dict, Optional, Sequence

from metafsl.errors import Interrupted, UserError

log = logging.getLogger(__name__)

#: what the forkserver imports once, before it forks the workers (and the launcher's restarts)
PRELOAD = ["metafsl.api", "metafsl.engine.recipe", "torch._dynamo"]


def needs_launch(cfg: Dict[str, Any]) -> bool:
    """Whether ``cfg`` asks for workers that no launcher has started yet."""
    node = cfg.get("distributed") or {}
    wanted = int(node.get("nproc_per_node", 1)) * int(node.get("nnodes", 1))
    return wanted > 1 and "RANK" not in os.environ


def world_size(cfg: Dict[str, Any]) -> int:
    """The number of workers of the run: the launcher's (``WORLD_SIZE``) or the config's."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    node = cfg.get("distributed") or {}
    return int(node.get("nproc_per_node", 1)) * int(node.get("nnodes", 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def launch_config(cfg: Dict[str, Any]):
    from torch.distributed.launcher.api import LaunchConfig

    node = cfg["distributed"]
    endpoint = node.get("rdzv_endpoint") or f"localhost:{free_port()}"
    timeout = max(1, int(float(node["join_timeout"])))
    nnodes = int(node["nnodes"])
    return LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=int(node["nproc_per_node"]),
        run_id=os.environ.get("METAFSL_RDZV_ID") or _run_id(node, endpoint), rdzv_backend="c10d",
        rdzv_endpoint=endpoint, max_restarts=int(node["max_restarts"]), monitor_interval=0.1,
        rdzv_configs={"join_timeout": timeout, "read_timeout": timeout, "last_call_timeout": 1,
                      "is_host": int(node["node_rank"]) == 0},
        start_method=start_method())


def start_method() -> str:
    """forkserver: one fresh server process imports ``PRELOAD`` once and forks every worker (and
    every restart after a failure) from it, where spawn makes each worker import torch and metafsl
    again (seconds of CPU each).  The server is not this process, so none of its threads, CUDA
    state or locks travel to the workers (what makes plain fork unsafe).  spawn where the
    platform has no forkserver."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    multiprocessing.set_forkserver_preload(PRELOAD)
    return "forkserver"


def _run_id(node: Dict[str, Any], endpoint: str) -> str:
    """The rendezvous id: the same on every machine of a multi-machine run (from the endpoint),
    fresh for a run on one machine."""
    return f"metafsl-{endpoint}" if int(node["nnodes"]) > 1 else f"metafsl-{uuid.uuid4().hex[:8]}"


def picklable(callbacks: Sequence[Any]) -> list:
    """The callbacks that can travel to the rank-0 worker (the console report does)."""
    kept = []
    for cb in callbacks:
        try:
            pickle.dumps(cb)
            kept.append(cb)
        except Exception:  # a callback holding an open file or a lock stays behind
            log.debug(f"{type(cb).__name__} is not passed to the workers.")
    return kept


def launch(cfg: Dict[str, Any], worker: Callable[..., Optional[tuple]], args: Sequence[Any]) -> None:
    """Run ``worker(*args)`` on the workers ``cfg.distributed`` asks for; raise the first worker's
    error sentence, or one sentence for a failed launch."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import elastic_launch

    config = launch_config(cfg)
    try:
        results = elastic_launch(config, worker)(*args)
    except RendezvousError:
        raise UserError(f"The workers could not meet at {config.rdzv_endpoint} within "
                        f"{cfg['distributed']['join_timeout']} s (distributed.nnodes={config.max_nodes}); "
                        "start the same command on every machine, or check distributed.rdzv_endpoint.") from None
    except ChildFailedError as exc:
        raise UserError(f"A worker failed ({_failure(exc)}) after {config.max_restarts} restart(s); "
                        "raise distributed.max_restarts, or resume with resume=true.") from None
    except SignalException as exc:
        raise Interrupted(f"Stopped by {exc.sigval.name}; the workers saved checkpoints/last.pt: resume "
                          "with resume=true and the same hydra.run.dir.", 128 + int(exc.sigval)) from None
    _raise_first(results)


def _failure(exc) -> str:
    failures = getattr(exc, "failures", {}) or {}
    for rank, failure in sorted(failures.items()):
        return f"rank {rank} exit code {failure.exitcode}"
    return "no details"


def _raise_first(results: Optional[Dict[int, Any]]) -> None:
    for _, outcome in sorted((results or {}).items()):
        if outcome is not None:
            message, code = outcome
            raise (Interrupted(message, code) if code >= 128 else UserError(message))
