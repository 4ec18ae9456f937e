"""One real Hydra app per command that composes a run config (run dirs, multirun, --help).

Each app is a thin ``@hydra.main`` wrapper around a ``metafsl.api`` call; user mistakes become
one clear sentence and exit code 2 (130/143 for a training stopped by SIGINT/SIGTERM).
The apps write no ``.hydra/`` snapshot themselves (``hydra.output_subdir: null``): the
training writes it after its checks, so a refused command leaves an existing run untouched.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from metafsl.config import register_configs
from metafsl.errors import UserError, exit_code

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
                from metafsl.reporting.console import error

                error(str(exc))
                raise SystemExit(exit_code(exc)) from None
            except KeyboardInterrupt:
                from metafsl.reporting.console import error

                error("Interrupted; resume with resume=true and the same hydra.run.dir.")
                raise SystemExit(130) from None

    return wrapper


@_guarded
def _train(cfg: DictConfig) -> float:
    from metafsl.commands.train import train_command

    # The objective for sweepers (e.g. Optuna): validation accuracy, else test accuracy.
    return train_command(cfg).objective


@_guarded
def _data(cfg: DictConfig) -> int:
    from metafsl.api import resolved
    from metafsl.commands.data import data_command

    return data_command(resolved(cfg))


def _app(config_name: str, fn):
    return hydra.main(version_base=None, config_path="conf", config_name=config_name)(fn)


APPS = {
    "train": _app("train", _train),
    "sweep": _app("sweep", _train),
    "data": _app("data", _data),
}
