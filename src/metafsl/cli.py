"""`metafsl <command> [overrides]`: dispatch to one Hydra app per command.

Kept free of heavy imports so that ``metafsl --help`` and ``metafsl list`` are instant.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from metafsl.conf import CONF_DIR, GROUPS, group_options  # noqa: F401 - re-exported
from metafsl.overrides import (  # noqa: F401 - re-exported
    check_group_overrides,
    config_error,
    unknown_key_error,
    user_error_inside,
)

COMMANDS = {
    "train": "meta-train a learner on a composed config, then test it",
    "test": "evaluate a run's best checkpoint: metafsl test run=<run dir> [overrides]",
    "sweep": "Hydra multirun of train over comma lists; writes sweep_summary.csv",
    "list": "print the config groups and their options: metafsl list [group]",
    "data": "check a dataset's files and print per-split statistics",
    "demo": "ProtoNet and MAML on built-in glyphs 5-way 1-shot vs. untrained (what `make demo` runs)",
    "reproduce": "run a published table's rows and compare: metafsl reproduce table=<name> [budget=0.1]",
    "results": "one table of run/sweep dirs: metafsl results <dir>... [sort=test] [format=md] [plot=shots]",
    "predict": "classify your images: metafsl predict run=<run dir> support=<dir> query=<dir or files>",
}

#: commands that are plain drivers (no Hydra app of their own): module:function(args) -> exit code
DRIVERS = {
    "test": "metafsl.commands.test:test_command",
    "demo": "metafsl.commands.demo:demo_command",
    "reproduce": "metafsl.commands.reproduce:reproduce_command",
    "results": "metafsl.commands.results:results_command",
    "predict": "metafsl.commands.predict:predict_command",
}

USAGE = """usage: metafsl <command> [key=value ...] [hydra options]

Few-shot image classification by meta-learning, driven by composed Hydra configs.

commands:
{commands}

examples:
  metafsl train algo=maml dataset=omniglot episode=5w1s paths.data_dir=../shared/data
  metafsl test run=outputs/train/2026-11-22_10-00-00 episode=20w1s
  metafsl sweep algo=maml,protonet trainer.iterations=500
  metafsl list algo

`metafsl <command> --help` shows the composed config and every option of that command.
"""


def usage() -> str:
    cmds = "\n".join(f"  {name:<9} {desc}" for name, desc in COMMANDS.items())
    return USAGE.format(commands=cmds)


def _fail(message: str, code: int = 2) -> int:
    from metafsl.reporting.console import error

    error(message)
    return code


def run_hydra(command: str, args: List[str]) -> int:
    from metafsl import apps

    problem = check_group_overrides(args)
    if problem:
        return _fail(problem)
    if command == "sweep":
        flag = next((a for a in args if a.split("=")[0] in ("--cfg", "-c", "--run", "-r", "--info", "-i")), None)
        if flag:
            return _fail(f"'{flag}' does not combine with a sweep; inspect one job's config with "
                         "'metafsl train <overrides> --cfg job' instead.")
    argv = [f"metafsl {command}"] + (["--multirun"] if command == "sweep" else []) + args
    saved, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = argv
    # Hydra prints configuration errors over several lines; let them reach us instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    apps.RunDirs.failed = None
    try:
        apps.APPS[command]()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        sentence = (user_error_inside(exc) or unknown_key_error(exc, args) or config_error(exc)
                    or apps.dir_error(exc))
        if sentence is None or full_error:
            raise
        return _fail(sentence)
    finally:
        sys.argv = saved
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    return 0


def run_driver(command: str, args: List[str]) -> int:
    import importlib

    module_name, _, fn = DRIVERS[command].partition(":")
    module = importlib.import_module(module_name)
    if any(a in ("-h", "--help") for a in args):
        print(module.__doc__)
        return 0
    if not os.environ.get("METAFSL_VERBOSE") and "verbose=true" not in args:
        import warnings

        warnings.filterwarnings("ignore")
    from metafsl.errors import UserError, exit_code

    try:
        return getattr(module, fn)(args)
    except UserError as exc:
        return _fail(str(exc), exit_code(exc))
    except KeyboardInterrupt:
        return _fail("Interrupted.", 130)


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command in ("-V", "--version"):
        from metafsl import __version__

        print(f"metafsl {__version__}")
        return 0
    if command in ("list", "demo") and any(a in ("-h", "--help") for a in rest):
        import importlib

        print(importlib.import_module(f"metafsl.commands.{'listing' if command == 'list' else command}").__doc__)
        return 0
    if command == "list":
        from metafsl.commands.listing import list_command

        return list_command(rest)
    if command in DRIVERS:
        return run_driver(command, rest)
    if command in COMMANDS:
        if not os.environ.get("METAFSL_VERBOSE") and "verbose=true" not in rest:
            import warnings

            warnings.filterwarnings("ignore")
        return run_hydra(command, rest)
    return _fail(f"Unknown command '{command}'; choose one of: {', '.join(COMMANDS)} (metafsl --help).")


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
