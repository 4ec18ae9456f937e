"""Named points of a training run where process-wide listeners are called.

Production code only announces events (through ``metafsl.engine.callbacks``; every training
also passes them to ``Listeners``); tests install listeners here (``tests/fault_runner.py`` kills
the process at a chosen event to prove that a run resumes without loss), which reaches a
training started anywhere in the process, the CLI's included.  Nothing here reads the environment.

Events (``event``, ``iteration``):
- ``iteration_end``: an iteration's step, logging and any checkpoint writes are done;
- ``checkpoint_written``: a checkpoint file was just replaced (``iteration`` of its state);
- ``final_validation_start``: training is over and its last.pt is on disk;
- ``test_start``: the final test on the test split begins.
"""
from __future__ import annotations

from typing import Callable, List

from metafsl.engine.callbacks import Callback

Listener = Callable[[str, int], None]

#: called in order with (event, iteration); tests append and remove their own
LISTENERS: List[Listener] = []


def emit(event: str, iteration: int) -> None:
    for listener in list(LISTENERS):
        listener(event, iteration)


class Listeners(Callback):
    """The process-wide listeners as one callback of a training."""

    def on_event(self, event: str, iteration: int) -> None:
        emit(event, iteration)
