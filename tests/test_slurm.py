"""SLURM tasks of a submitit job become torch.distributed workers (engine/slurm.py)."""
import os

import pytest

from metafsl.engine import slurm

JOB = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8",
       "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]",
       "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}
TORCH = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def env(monkeypatch):
    """The variables of a clean process; afterwards the environment is restored as a whole
    (export_torch_env writes into os.environ, which monkeypatch alone would not undo)."""
    saved = dict(os.environ)
    for key in (*TORCH, *JOB, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


def test_task_of_a_multi_task_job_gets_torch_env(env):
    for key, value in JOB.items():
        env.setenv(key, value)
    assert slurm.export_torch_env()
    got = {k: os.environ[k] for k in TORCH}
    assert got["MASTER_ADDR"] == "gpu07"  # the job's first node
    assert (got["RANK"], got["WORLD_SIZE"], got["LOCAL_RANK"], got["LOCAL_WORLD_SIZE"]) == ("5", "8", "1", "4")
    assert 20000 <= int(got["MASTER_PORT"]) <= 60000  # the same on every task: derived from the job id
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # LOCAL_RANK picks its GPU among all of them


@pytest.mark.parametrize("change", [{"SLURM_NTASKS": "1"}, {"SUBMITIT_EXECUTOR": "local"},
                                    {"RANK": "0"}])
def test_single_task_other_executor_or_torchrun_left_alone(env, change):
    for key, value in {**JOB, **change}.items():
        env.setenv(key, value)
    assert not slurm.export_torch_env()
    assert os.environ.get("WORLD_SIZE") is None


def test_outside_slurm(env):
    assert slurm.slurm_tasks({}) == 0
    assert slurm.slurm_tasks(JOB) == 8
