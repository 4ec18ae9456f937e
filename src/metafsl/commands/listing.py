"""`metafsl list [group]`: config groups and their options, from the packaged conf/ folder,
and the tables of `metafsl reproduce` (`metafsl list table`).

Reads the YAML files as text (no torch, no Hydra): instant.
"""
from __future__ import annotations

from typing import List

from metafsl.commands.base import Command
from metafsl.conf import CONF_DIR, GROUPS, group_options
from metafsl.errors import UserError

MAX_DESCRIPTION = 160


def describe(group: str, option: str) -> str:
    """The first sentence of an option file's header comment (experiment presets: after the
    command line), which may run over several comment lines."""
    lines = (CONF_DIR / group / f"{option}.yaml").read_text().splitlines()
    comments = [ln.lstrip("# ").strip() for ln in lines if ln.startswith("#") and "@package" not in ln]
    comments = [c for c in comments if c and not c.startswith("metafsl ")]
    words: List[str] = []
    for line in comments:
        words.append(line)
        if line.endswith((".", ":")):
            break
    text = " ".join(words).rstrip(":")
    if len(text) > MAX_DESCRIPTION:
        text = text[:MAX_DESCRIPTION].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return text


#: what `metafsl list` shows: the Hydra config groups, then the reproduction tables
LISTABLE = (*GROUPS, "table")


def run(args: List[str]) -> int:
    from metafsl.reporting.console import table

    groups = list(LISTABLE)
    if args:
        if args[0] not in LISTABLE:
            raise UserError(f"Unknown config group '{args[0]}'; choose one of: {', '.join(LISTABLE)}.")
        groups = [args[0]]
    for group in groups:
        options = group_options(group)
        table(f"{group} ({len(options)})", ["option", "description"],
              [[o, describe(group, o)] for o in options])
    return 0


COMMAND = Command(
    name="list",
    summary="print the config groups and their options: metafsl list [group]",
    usage="metafsl list [group]",
    description="""
The config groups (dataset, backbone, algo, episode, trainer, eval, experiment, protocol,
hparams_search, logger) with each option's one-line description, and the tables of
`metafsl reproduce` (metafsl list table).""",
    examples=("metafsl list", "metafsl list algo", "metafsl list experiment"),
    run=run,
)
