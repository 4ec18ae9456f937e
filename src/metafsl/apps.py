"""One real Hydra app per command (run dirs, ``.hydra/`` snapshots, multirun).

Each app is a thin ``@hydra.main`` wrapper around a plain function that returns metrics;
user mistakes become one clear sentence and exit code 2.
"""
from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from metafsl.config import check_run_config, register_configs
from metafsl.errors import UserError

register_configs()


def _guarded(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    @functools.wraps(fn)
    def wrapper(cfg: DictConfig):
        verbose = bool(cfg.get("verbose", False))
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            try:
                return fn(cfg)
            except UserError as exc:
                from metafsl.reporting.console import error  # noqa: PLC0415

                error(str(exc))
                raise SystemExit(2) from None
            except KeyboardInterrupt:
                from metafsl.reporting.console import error  # noqa: PLC0415

                error("Interrupted; resume with resume=true and the same hydra.run.dir.")
                raise SystemExit(130) from None

    return wrapper


def _resolved(cfg: DictConfig) -> Dict[str, Any]:
    """The plain, resolved config, checked (ranges, types, _target_ arguments) before any work."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # a missing value or a broken interpolation in the user's config
        raise UserError(f"The configuration is incomplete: {exc}".splitlines()[0]) from None
    check_run_config(resolved)
    return resolved


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@_guarded
def _train(cfg: DictConfig) -> float:
    from metafsl.commands.train import train_command  # noqa: PLC0415

    summary = train_command(_resolved(cfg), _run_dir())
    best = summary["val"]["best_acc"]
    # The objective for sweepers (e.g. Optuna): validation accuracy, else test accuracy.
    return float(best if best is not None else summary.get("test", {}).get("acc", 0.0))


@_guarded
def _test(cfg: DictConfig) -> float:
    from metafsl.commands.test import test_command  # noqa: PLC0415

    # Only what the user typed overrides the run's saved config (not the group choices
    # prepare_test_args added for typed composition).
    overrides = _USER_TEST_ARGS or list(HydraConfig.get().overrides.task)
    return test_command(cfg, overrides, _run_dir())["acc"]


@_guarded
def _data(cfg: DictConfig) -> int:
    from metafsl.commands.data import data_command  # noqa: PLC0415

    return data_command(_resolved(cfg))


def _app(config_name: str, fn):
    return hydra.main(version_base=None, config_path="conf", config_name=config_name)(fn)


APPS = {
    "train": _app("train", _train),
    "sweep": _app("sweep", _train),
    "test": _app("test", _test),
    "data": _app("data", _data),
}


_USER_TEST_ARGS: List[str] = []


def prepare_test_args(args: List[str]) -> List[str]:
    """Check ``run=`` and compose `test` with the run's own group choices (typed schemas),
    unless the user overrides them."""
    runs = [a.split("=", 1)[1].strip("'\"") for a in args if a.startswith("run=")]
    if not runs or not runs[-1]:
        raise UserError("metafsl test needs the run to evaluate: metafsl test run=<run dir>.")
    run = Path(runs[-1])
    if not run.is_dir():
        raise UserError(f"Run dir {run} does not exist.")
    saved = run / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise UserError(f"{run} is not a metafsl run dir (no .hydra/config.yaml).")
    conf = OmegaConf.load(saved)
    given = {a.split("=", 1)[0] for a in args if "=" in a}
    groups = ("dataset", "backbone", "algo", "episode", "trainer", "eval")
    choices = [f"{g}={conf[g].name}" for g in groups if g not in given and g in conf and "name" in conf[g]]
    _USER_TEST_ARGS[:] = [a for a in args if not a.startswith("hydra")]
    return choices + args


def main() -> None:  # pragma: no cover - python -m metafsl.apps
    from metafsl.cli import main as cli_main

    sys.exit(cli_main())
