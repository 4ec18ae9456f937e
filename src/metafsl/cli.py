"""`metafsl <command> [overrides]`: dispatch to one Hydra app per command.

Kept free of heavy imports so that ``metafsl --help`` and ``metafsl list`` are instant.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from metafsl.conf import CONF_DIR, GROUPS, group_options  # noqa: F401 - re-exported

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


def check_group_overrides(args: List[str]) -> Optional[str]:
    """A one-sentence error for `group=option` naming an option that does not exist."""
    from metafsl.arguments import split

    for arg in args:
        if "=" in arg and not arg.lstrip("+~").split("=", 1)[0].strip():
            return f"Cannot parse the override '{arg}': it needs a key (key=value, e.g. seed=5)."
        pair = None if arg.startswith(("-", "~", "+")) else split(arg)
        if pair is None:
            continue
        key, value = pair
        if key not in GROUPS or "(" in value or value in ("null", ""):
            continue
        known = group_options(key)
        for option in value.split(","):
            if option not in known:
                return f"Unknown {key} '{option}'; choose one of: {', '.join(known)}."
    return None


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
    try:
        apps.APPS[command]()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        sentence = user_error_inside(exc) or unknown_key_error(exc, args) or config_error(exc)
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


def user_error_inside(exc: BaseException) -> Optional[str]:
    """The sentence of a UserError that Hydra or OmegaConf wrapped (e.g. raised by a resolver)."""
    from metafsl.errors import UserError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return str(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def unknown_key_error(exc: Exception, args: List[str]) -> Optional[str]:
    """'Could not override a.b.c' (a key the composed config does not have): one sentence that
    names the key and the keys that ``a.b`` has."""
    import re

    match = re.search(r"Could not override '([^']+)'", str(exc))
    if not match:
        return None
    path = match.group(1)
    parent, _, key = path.rpartition(".")
    valid = sibling_keys(parent, [a for a in args if "=" in a and a.split("=", 1)[0] in GROUPS])
    where = f"'{parent}'" if parent else "the config"
    known = f"; {where} has: {', '.join(valid)}" if valid else ""
    return f"Unknown option '{path}'{known} (metafsl list shows the options)."


def sibling_keys(parent: str, group_args: List[str]) -> List[str]:
    """The keys of ``parent`` in the config composed with the user's group choices only."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="metafsl.conf", version_base=None):
            node = compose(config_name="train", overrides=group_args)
        for part in [p for p in parent.split(".") if p]:
            node = node[part]
        return sorted(k for k in node.keys() if not str(k).startswith("_"))
    except Exception:  # the listing is a courtesy: never let it hide the first error
        return []


def config_error(exc: Exception) -> Optional[str]:
    """One sentence for a Hydra/OmegaConf configuration error (None for any other exception)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(exc, (HydraException, OmegaConfBaseException)):
        return None
    first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
    if getattr(exc, "override", None):  # OverrideParseException
        first = f"Cannot parse the override '{exc.override}' ({first})"
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        first += ": " + str(cause).strip().splitlines()[0].rstrip(".")
    return f"{first} (metafsl list shows the options; add --cfg job to print the composed config)."


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
