"""The commands of ``metafsl``: one module each, holding its ``COMMAND``
(``metafsl.commands.base.Command``); the registry below is the one list of them, which
``metafsl --help``, ``metafsl <command> --help`` and dispatch read.  Adding a command is one
module and one line here.  Command modules import only light modules at their top (the heavy
work is imported inside ``run``), so that help and dispatch stay instant.
"""
from __future__ import annotations

from typing import Dict

from metafsl.commands import (
    cp,
    data,
    demo,
    export,
    listing,
    predict,
    reproduce,
    results,
    sweep,
    tasks,
    test,
    train,
    validate,
)
from metafsl.commands.base import Command

#: name -> command, in the order `metafsl --help` lists them
COMMANDS: Dict[str, Command] = {c.name: c for c in (
    train.COMMAND,
    test.COMMAND,
    sweep.COMMAND,
    validate.COMMAND,
    predict.COMMAND,
    export.COMMAND,
    tasks.COMMAND,
    reproduce.COMMAND,
    results.COMMAND,
    data.COMMAND,
    listing.COMMAND,
    cp.COMMAND,
    demo.COMMAND,
)}
