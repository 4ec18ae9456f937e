"""Run a command's Hydra app (``train``, ``sweep``, ``data``, ``validate``): Hydra composes the
config from ``conf/`` and the user's overrides, makes the run dir (``--multirun`` for a sweep) and
calls the command's task function.  Hydra's own error reports become one sentence (a
``UserError``, which ``metafsl.cli`` turns into exit code 2); Hydra's flags (``--cfg job``,
``--hydra-help``, ``--info``) pass through.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from metafsl.errors import UserError
from metafsl.overrides import (
    check_group_overrides,
    config_error,
    config_file,
    unknown_key_error,
    user_error_inside,
)

#: Hydra flags that inspect one composed config (not a sweep's many)
_INSPECT = ("--cfg", "-c", "--run", "-r", "--info", "-i")


@contextlib.contextmanager
def _hydra_argv(argv: List[str]) -> Iterator[None]:
    """Hydra reads sys.argv; it also prints configuration errors over several lines unless
    HYDRA_FULL_ERROR is set, in which case they reach us as exceptions."""
    saved, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = argv
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        sys.argv = saved
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


class RunDirs(Callback):
    """Makes an explicit ``hydra.run.dir`` (and the sweep dir) just before Hydra does
    (``hydra.callbacks.run_dirs`` in conf/common.yaml): a run dir made here is known to be new (a
    training refused before any work removes it again, ``api.train(created=...)``), and one that
    cannot be made (a read-only filesystem) is explained in one sentence (Hydra reports callback
    errors as warnings, so it is kept here for ``dir_error``, which Hydra's failed ``mkdir`` then
    finds)."""

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


class QuietSweeper(Callback):
    """Keeps Optuna's own log lines ("A new study created in memory ...", one per trial) off the
    console unless ``verbose=true`` (``hydra.callbacks.quiet_sweeper``): Optuna gives its logger
    a handler of its own at INFO when imported, so Hydra's logging settings do not reach it.  The
    sweep's results are metafsl's own table and ``optimization_results.yaml``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
        if "optuna" in target and not OmegaConf.select(config, "verbose", default=False):
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)


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


def created_run_dir(output_dir: str) -> Optional[bool]:
    """True when ``RunDirs`` made this job's run dir (then a refused training removes it)."""
    made, RunDirs.made = RunDirs.made, None
    return True if made is not None and made == output_dir else None


@contextlib.contextmanager
def _one_composition() -> Iterator[None]:
    """Hydra 1.3 composes the whole config twice per command: once only to read ``hydra.mode``
    (``Hydra.get_mode``), then for the job. metafsl already knows the mode from the subcommand
    (``--multirun`` for a sweep), so the probe answers None, which is Hydra's own answer when the
    probe fails: Hydra then sets ``hydra.mode`` from ``--multirun`` and composes once. This
    halves the configuration work of every command (about 0.2 s of CPU each; hydra-core is
    pinned below 1.4, and without the method nothing is changed)."""
    from hydra._internal.hydra import Hydra

    probe = Hydra.__dict__.get("get_mode")
    if probe is None:
        yield
        return
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.get_mode = probe


class _Failed(BaseException):
    """Carries a task's exception past Hydra's job runner, which would print its own report
    ("Error executing job ...") for an ``Exception``; ``run_app`` raises the exception again."""


def _carried(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(task)
    def wrapper(cfg: Any) -> Any:
        try:
            return task(cfg)
        except Exception as exc:
            raise _Failed(exc) from exc

    return wrapper


def run_app(config_name: str, task: Callable[[Any], Any], args: List[str], multirun: bool = False) -> int:
    """Compose ``conf/<config_name>.yaml`` with ``args`` and call ``task(cfg)`` (once per job)."""
    problem = check_group_overrides(args)
    if problem:
        raise UserError(problem)
    with config_file(args) as composed:
        return _run(config_name, task, composed, multirun)


def _run(config_name: str, task: Callable[[Any], Any], args: List[str], multirun: bool) -> int:
    import hydra

    from metafsl.api import register_resolvers

    flag = next((a for a in args if a.split("=")[0] in _INSPECT), None)
    if multirun and flag:
        raise UserError(f"'{flag}' does not combine with a sweep; inspect one job's config with "
                        "'metafsl train <overrides> --cfg job' instead.")
    register_resolvers()
    app = hydra.main(version_base=None, config_path="pkg://metafsl.conf", config_name=config_name)(_carried(task))
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    RunDirs.failed = None
    with _hydra_argv([f"metafsl {config_name}", *(["--multirun"] if multirun else []), *args]), _one_composition():
        try:
            app()
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except _Failed as failed:
            raise _as_user_error(failed.args[0], args, full_error) from None
        except Exception as exc:
            raise _as_user_error(exc, args, full_error) from None
    return 0


def _as_user_error(exc: Exception, args: List[str], full_error: Any) -> Exception:
    """The UserError inside ``exc``, or Hydra's configuration error as one sentence; any other
    exception (a bug) as it is, and everything as it is with HYDRA_FULL_ERROR=1."""
    inner = user_error_inside(exc)
    if inner is not None:
        return inner
    sentence = None if full_error else unknown_key_error(exc, args) or config_error(exc) or dir_error(exc)
    return exc if sentence is None else UserError(sentence)
