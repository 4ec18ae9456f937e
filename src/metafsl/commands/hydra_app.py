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
from typing import Any, Callable, Iterator, List

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
    with _hydra_argv([f"metafsl {config_name}", *(["--multirun"] if multirun else []), *args]):
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
    sentence = None if full_error else unknown_key_error(exc, args) or config_error(exc)
    return exc if sentence is None else UserError(sentence)
