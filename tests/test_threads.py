"""CPU threads per process (runtime.threads): each parallel job of a sweep gets its share of the
cores; a bad setting is one sentence."""
from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from metafsl import api
from metafsl.engine.runtime import apply_threads, cpu_cores, task_threads_setting, threads_for
from metafsl.errors import UserError


def hydra(mode: str, **launcher):
    return OmegaConf.create({"hydra": {"mode": mode, "launcher": launcher}})


def test_parallel_jobs_are_the_joblib_launchers_n_jobs_in_a_sweep():
    assert api.parallel_jobs(None) == 1
    assert api.parallel_jobs(hydra("RunMode.RUN", n_jobs=4)) == 1  # not a sweep
    assert api.parallel_jobs(hydra("RunMode.MULTIRUN")) == 1  # the basic launcher: one at a time
    assert api.parallel_jobs(hydra("RunMode.MULTIRUN", n_jobs=2)) == 2
    assert api.parallel_jobs(hydra("RunMode.MULTIRUN", n_jobs=-1)) == os.cpu_count()


def test_auto_shares_the_cores_and_a_number_is_kept():
    assert threads_for("auto", 1) is None  # alone: torch's default
    assert threads_for("auto", 2) == max(1, cpu_cores() // 2)
    assert threads_for("auto", 10 * cpu_cores()) == 1
    assert threads_for(3, 2) == 3
    before = torch.get_num_threads()
    try:
        apply_threads({"runtime": {"threads": 2}})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("check, sentence", [(threads_for, "runtime.threads must be auto or a whole number"),
                                             (task_threads_setting, "runtime.task_threads must be a whole number")])
@pytest.mark.parametrize("bad", [0, -1, "many", True, 1.5])
def test_a_bad_thread_count_is_one_sentence(check, sentence, bad):
    with pytest.raises(UserError, match=sentence):
        check(bad)


@pytest.mark.parametrize("option, sentence", [("threads", "runtime.threads must be auto"),
                                              ("task_threads", "runtime.task_threads must be a whole number")])
def test_a_training_refuses_a_bad_thread_count_before_any_work(run_cli, tmp_path, option, sentence):
    code, out, err = run_cli("train", f"hydra.run.dir={tmp_path / 'run'}", f"runtime.{option}=0")
    assert code != 0 and sentence in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
