"""Run ``metafsl`` in this process and inject a fault at a chosen event.

    python tests/fault_runner.py EVENT ITERATION [ACTION] -- <metafsl args>

EVENT is one of ``metafsl.engine.hooks``' events; ITERATION is the iteration at which to act
(-1: the first time EVENT happens).  ACTION:
- ``exit`` (default): hard-exit as ``kill -9`` would; exit code 75 means the fault fired;
- ``SIGTERM`` / ``SIGINT``: send that signal to this process (as a cluster preemption or Ctrl-C);
- ``hang``: print ``HANG`` and sleep (another process can then act while this one holds the run).
"""
from __future__ import annotations

import os
import signal
import sys
import time


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    event, iteration = argv[0], int(argv[1])
    action = argv[2] if sep > 2 else "exit"
    from metafsl.cli import main as cli_main
    from metafsl.engine import hooks

    def fault(name: str, it: int) -> None:
        if name != event or (iteration >= 0 and it != iteration):
            return
        sys.stdout.flush()
        if action == "exit":
            os._exit(75)
        if action == "hang":
            print("HANG", flush=True)
            time.sleep(120)
            return
        hooks.LISTENERS.remove(fault)
        os.kill(os.getpid(), getattr(signal, action))

    hooks.LISTENERS.append(fault)
    return cli_main(argv[sep + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
