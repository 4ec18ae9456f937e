"""Run ``metafsl`` in this process and hard-exit (as ``kill -9`` would) at a chosen event.

    python tests/fault_runner.py EVENT ITERATION -- <metafsl args>

EVENT is one of ``metafsl.engine.hooks``' events; ITERATION is the iteration at which to die
(-1: the first time EVENT happens).  Exit code 75 means the fault fired.
"""
from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    event, iteration = argv[0], int(argv[1])
    from metafsl.cli import main as cli_main
    from metafsl.engine import hooks

    def die(name: str, it: int) -> None:
        if name == event and (iteration < 0 or it == iteration):
            sys.stdout.flush()
            os._exit(75)

    hooks.LISTENERS.append(die)
    return cli_main(argv[sep + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
