"""Named points of a training run where listeners are called.

Production code only announces events; tests install listeners (``tests/fault_runner.py`` kills
the process at a chosen event to prove that a run resumes without loss).  Nothing here reads the
environment.

Events (``event``, ``iteration``):
- ``iteration_end``: an iteration's step, logging and any checkpoint writes are done;
- ``checkpoint_written``: a checkpoint file was just replaced (``iteration`` of its state);
- ``final_validation_start``: training is over and its last.pt is on disk;
- ``test_start``: the final test on the test split begins.
"""
from __future__ import annotations

from typing import Callable, List

Listener = Callable[[str, int], None]

#: called in order with (event, iteration); tests append and remove their own
LISTENERS: List[Listener] = []


def emit(event: str, iteration: int) -> None:
    for listener in list(LISTENERS):
        listener(event, iteration)
