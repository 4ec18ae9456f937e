"""SLURM tasks as the workers of one distributed training (Hydra's submitit launcher).

``metafsl sweep hydra/launcher=submitit_slurm hydra.launcher.nodes=2 hydra.launcher.tasks_per_node=4
hydra.launcher.gpus_per_node=4 ...`` starts every job as ``nodes x tasks_per_node`` SLURM tasks,
each running the whole training.  Each task becomes one worker: submitit's own
``TorchDistributedEnvironment`` (a well-kept mapping, so not written here) turns SLURM's variables
into torch's ``env://`` ones (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` = the job's
first node, ``MASTER_PORT`` derived from the job id), and the training joins them exactly as it
joins the workers of an external ``torchrun``.  A job of one task, or a task already started by
``torchrun`` inside the allocation, is left alone.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional


def slurm_tasks(environ: Optional[Mapping[str, str]] = None) -> int:
    """How many tasks this process's submitit SLURM job has (0 outside such a job)."""
    env = os.environ if environ is None else environ
    if env.get("SUBMITIT_EXECUTOR") != "slurm" or "SLURM_JOB_ID" not in env:
        return 0
    try:
        return int(env.get("SLURM_NTASKS", "1"))
    except ValueError:
        return 0


def export_torch_env() -> bool:
    """Set torch's ``env://`` variables from the SLURM job when this process is one task of a
    multi-task submitit job and no launcher set them; whether it did."""
    if slurm_tasks() < 2 or "RANK" in os.environ:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    # every task keeps all the node's GPUs visible: worker LOCAL_RANK takes cuda:LOCAL_RANK
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True
