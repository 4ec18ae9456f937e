"""`metafsl list [group]`: config groups and their options, from the packaged conf/ folder.

Reads the YAML files as text (no torch, no Hydra): instant.
"""
from __future__ import annotations

from typing import List

from metafsl.cli import CONF_DIR, GROUPS, group_options


def describe(group: str, option: str) -> str:
    """The first comment line of an option file (experiment presets: the one after the header)."""
    lines = (CONF_DIR / group / f"{option}.yaml").read_text().splitlines()
    comments = [ln.lstrip("# ").strip() for ln in lines if ln.startswith("#") and "@package" not in ln]
    comments = [c for c in comments if c and not c.startswith("metafsl ")]
    return comments[0] if comments else ""


def list_command(args: List[str]) -> int:
    from metafsl.reporting.console import error, table  # noqa: PLC0415

    groups = list(GROUPS)
    if args:
        if args[0] not in GROUPS:
            error(f"Unknown config group '{args[0]}'; choose one of: {', '.join(GROUPS)}.")
            return 2
        groups = [args[0]]
    for group in groups:
        options = group_options(group)
        table(f"{group} ({len(options)})", ["option", "description"],
              [[o, describe(group, o)] for o in options])
    return 0
