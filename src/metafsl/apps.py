"""One real Hydra app per command that composes a run config (run dirs, multirun, --help).

Each app is a thin ``@hydra.main`` wrapper around a ``metafsl.api`` call; user mistakes become
one clear sentence and exit code 2 (130/143 for a training stopped by SIGINT/SIGTERM).
The apps write no ``.hydra/`` snapshot themselves (``hydra.output_subdir: null``): the
training writes it after its checks, so a refused command leaves an existing run untouched.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

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


class RunDirs(Callback):
    """Makes an explicit ``hydra.run.dir`` (and the sweep dir) just before Hydra does: a run dir
    made here is known to be new (a training refused before any work removes it again, see
    ``api.train(created=...)``), and one that cannot be made (a read-only filesystem) is
    explained in one sentence (Hydra reports callback errors as warnings, so it is kept here for
    ``dir_error``, which the failed ``mkdir`` of Hydra then finds)."""

    #: the run dir the last ``on_run_start`` made (None: it existed, or is a default dir)
    made: Optional[str] = None
    #: the sentence for a run or sweep dir that could not be made
    failed: Optional[str] = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        RunDirs.made = RunDirs.failed = None
        raw = str(OmegaConf.to_container(config.hydra.run, resolve=False).get("dir"))
        if "${" in raw or Path(raw).exists():  # a default dir is new, and made by its resolver
            return
        if _make_dir(Path(raw), "hydra.run.dir"):
            RunDirs.made = os.path.abspath(raw)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        RunDirs.made = RunDirs.failed = None
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
        except Exception:  # the launcher meets (and reports) the same error
            return
        _make_dir(sweep_dir, "hydra.sweep.dir")


def _make_dir(path: Path, key: str) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        return True
    except OSError as exc:
        RunDirs.failed = (f"Cannot create {path} ({exc.strerror or exc.__class__.__name__}); "
                          f"pass {key}=<a writable folder>.")
        return False


def dir_error(exc: BaseException) -> Optional[str]:
    """The sentence for Hydra's failure to make the run or sweep dir (None for another error)."""
    failed, RunDirs.failed = RunDirs.failed, None
    return failed if isinstance(exc, OSError) else None


@_guarded
def _train(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from metafsl.commands.train import train_command

    made, RunDirs.made = RunDirs.made, None
    created = True if made is not None and made == HydraConfig.get().runtime.output_dir else None
    # The objective for sweepers (e.g. Optuna): validation accuracy, else test accuracy.
    return train_command(cfg, created).objective


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
