"""`metafsl <command> [arguments]`: look the command up in the registry
(``metafsl.commands.COMMANDS``) and run it.  The one place where a user's mistake (a
``UserError``) becomes one sentence on stderr and its exit code, and where third-party warnings
are silenced (unless ``verbose=true``).  Light imports only: ``metafsl --help`` is instant.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from metafsl.commands import COMMANDS
from metafsl.commands.base import Command

USAGE = """usage: metafsl <command> [key=value ...] [hydra options]

Few-shot image classification by meta-learning, driven by composed Hydra configs.

commands:
{commands}

examples:
  metafsl train algo=maml dataset=omniglot episode=5w1s paths.data_dir=../shared/data
  metafsl test run=outputs/train/2026-11-22_10-00-00 episode=20w1s
  metafsl sweep algo=maml,protonet trainer.iterations=500
  metafsl list algo

`metafsl <command> --help` shows that command's usage, options and examples.
"""


def usage() -> str:
    cmds = "\n".join(f"  {name:<9} {c.summary}" for name, c in COMMANDS.items())
    return USAGE.format(commands=cmds)


def _fail(message: str, code: int = 2) -> int:
    from metafsl.reporting.console import error

    error(message)
    return code


def _quiet(args: List[str]) -> None:
    """Third-party warnings and banners stay hidden unless asked for (verbose=true)."""
    if not os.environ.get("METAFSL_VERBOSE") and "verbose=true" not in args:
        import warnings

        warnings.filterwarnings("ignore")


def dispatch(command: Command, args: List[str]) -> int:
    """Run ``command``: its exit code, or the exit code of the one sentence it failed with."""
    from metafsl.errors import UserError, exit_code
    from metafsl.reporting.console import show_notices

    _quiet(args)
    show_notices()
    try:
        return command.run(args)
    except UserError as exc:
        return _fail(str(exc), exit_code(exc))
    except KeyboardInterrupt:
        return _fail(command.interrupted, 130)


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name in ("-V", "--version"):
        from metafsl import __version__

        print(f"metafsl {__version__}")
        return 0
    command = COMMANDS.get(name)
    if command is None:
        return _fail(f"Unknown command '{name}'; choose one of: {', '.join(COMMANDS)} (metafsl --help).")
    if any(a in ("-h", "--help") for a in rest):
        print(command.help())
        return 0
    return dispatch(command, rest)


def entry() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `metafsl train --help | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    entry()
