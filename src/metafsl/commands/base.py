"""One object per command: its name, one-line help, usage, examples, how it runs and what
Ctrl-C says.  ``metafsl --help``, ``metafsl <command> --help`` and dispatch (``metafsl.cli``)
all read it; ``metafsl.commands.COMMANDS`` lists them.  Stdlib only (``--help`` stays instant).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple


@dataclass(frozen=True)
class Command:
    name: str
    #: one line for ``metafsl --help``
    summary: str
    #: the synopsis, e.g. ``metafsl test run=<run dir> [checkpoint=best|last] [overrides]``
    usage: str
    #: what it does, for ``metafsl <name> --help``
    description: str
    examples: Tuple[str, ...]
    #: the arguments after the command name -> exit code; raises UserError for a user's mistake
    run: Callable[[List[str]], int]
    #: the Hydra config it composes (train, sweep, data): its help lists the config groups
    config: Optional[str] = None
    #: the sentence for Ctrl-C (exit code 130)
    interrupted: str = "Interrupted."

    def help(self) -> str:
        lines = [f"usage: {self.usage}", "", self.description.strip(), "", "examples:"]
        lines += [f"  {e}" for e in self.examples]
        if self.config:
            from metafsl.conf import GROUPS, group_options

            lines += ["", "config groups (metafsl list <group> describes each option):"]
            lines += [f"  {g:<15} {', '.join(group_options(g))}" for g in GROUPS if g != "experiment"]
            lines += [f"  {'experiment':<15} {len(group_options('experiment'))} presets (metafsl list experiment)",
                      "", f"Any key of the composed config is an override: metafsl {self.name} key=value; "
                      f"metafsl {self.name} --cfg job prints the composed config; --hydra-help Hydra's options."]
        return "\n".join(lines)
