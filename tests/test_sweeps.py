"""`metafsl sweep` with the Optuna sweeper (hparams_search) and the submitit local launcher."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from metafsl.config import short_dirname

SMALL = ["algo=protonet", "dataset.n_classes=60", "trainer=fast", "trainer.iterations=4", "trainer.val_every=2",
         "trainer.val_episodes=4", "eval.episodes=4", "episode.train.n_query=5", "episode.test.n_query=5",
         "backbone.hidden=16"]


def _sweep_dir(root: Path) -> Path:
    dirs = sorted((root / "sweep").iterdir())
    assert dirs, "no sweep dir written"
    return dirs[-1]


def _summary(sweep_dir: Path):
    with open(sweep_dir / "sweep_summary.csv") as f:
        return list(csv.DictReader(f))


def test_sweep_plugins_are_installed_and_found_by_hydra():
    """The sweep plugins are part of the test environment (`make setup` installs the `sweep`
    extra): a missing one fails here instead of skipping the sweep tests below."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper

    plugins = Plugins.instance()
    found = {c.__module__.split(".")[1] for kind in (Sweeper, Launcher) for c in plugins.discover(kind)
             if c.__module__.startswith("hydra_plugins.")}
    assert {"hydra_optuna_sweeper", "hydra_joblib_launcher", "hydra_submitit_launcher"} <= found


def test_short_dirname_keeps_short_names_and_hashes_long_ones():
    assert short_dirname("algo=maml,seed=1") == "algo=maml,seed=1"
    assert short_dirname("dataset.root=../data/x,seed=1") == "dataset.root=.._data_x,seed=1"  # one dir level
    a, b = short_dirname("x" * 300), short_dirname("x" * 299 + "y")
    assert len(a) < 140 and a != b and a.startswith("x" * 120)


def test_optuna_sweep_of_three_trials(run_cli, tmp_path):
    code, out, err = run_cli("sweep", "hparams_search=protonet_optuna", "hydra.sweeper.n_trials=3",
                               f"paths.output_dir={tmp_path}", *SMALL)
    assert code == 0, err
    assert "A new study created" not in out + err and "Trial 0 finished" not in out + err  # Optuna's own lines
    # the sweep leaves the library's loggers on (Hydra's "disabled" logging turned them off for good)
    assert not any(logger.disabled for name, logger in logging.root.manager.loggerDict.items()
                   if name.startswith("metafsl") and isinstance(logger, logging.Logger))
    sweep = _sweep_dir(tmp_path)
    rows = _summary(sweep)
    assert len(rows) == 3
    assert all(r["val_acc"] for r in rows)
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    # Optuna maximised the value each job returned: the best validation accuracy.
    assert best.best_value == pytest.approx(max(float(r["val_acc"]) for r in rows), abs=1e-6)
    assert set(best.best_params) == {"trainer.optimizer.lr", "episode.train.n_way", "algo.distance"}
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 3 and all("trainer.optimizer.lr=" in (sweep / j / ".hydra" / "overrides.yaml").read_text()
                                  for j in jobs)


def test_submitit_local_sweep_of_two_jobs(run_cli, tmp_path):
    code, _, err = run_cli("sweep", "hydra/launcher=submitit_local", "episode.train.n_way=5,10",
                             f"paths.output_dir={tmp_path}", *SMALL)
    assert code == 0, err
    sweep = _sweep_dir(tmp_path)
    assert (sweep / ".submitit").is_dir()  # the jobs really went through submitit
    rows = _summary(sweep)
    assert sorted(r["job"] for r in rows) == ["0", "1"]
    assert {("episode.train.n_way=5" in r["overrides"]) for r in rows} == {True, False}
    for r in rows:
        assert Path(r["run_dir"]).name.startswith(r["job"] + "_algo=protonet")
        assert float(r["test_acc"]) >= 0


def test_two_sweeps_started_in_the_same_second_get_their_own_dirs(run_cli, tmp_path, monkeypatch):
    """The default sweep dir is unique (as run dirs are), not a timestamp to the second: Hydra's
    clock is frozen here, so that the two sweeps start "in the same second"."""
    import datetime

    import hydra.core.utils

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)
    for _ in range(2):
        code, _, err = run_cli("sweep", f"paths.output_dir={tmp_path}", "seed=0", *SMALL)
        assert code == 0, err
    sweeps = sorted((tmp_path / "sweep").iterdir())
    assert len(sweeps) == 2
    for sweep in sweeps:
        rows = _summary(sweep)
        assert len(rows) == 1 and Path(rows[0]["run_dir"]).parent == sweep


def test_a_sweep_resumed_into_its_dir_skips_finished_jobs_and_runs_the_rest(run_cli, tmp_path):
    """`metafsl sweep ... resume=true hydra.sweep.dir=<its dir>` after a sweep stopped part-way:
    the finished job is left byte-identical, the job that never started runs."""
    sweep = tmp_path / "sweep"
    args = ["seed=0,1", f"hydra.sweep.dir={sweep}", *SMALL]
    code, _, err = run_cli("sweep", *args)
    assert code == 0, err
    finished, never = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    kept = (finished / "summary.json").read_bytes()
    import shutil

    shutil.rmtree(never)  # as if the sweep had been stopped before its second job
    code, out, err = run_cli("sweep", *args, "resume=true")
    assert code == 0, err + out
    assert (finished / "summary.json").read_bytes() == kept
    assert "finished run" in out + err
    assert (never / "summary.json").is_file()
    assert len(_summary(sweep)) == 2
