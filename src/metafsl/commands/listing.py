"""`metafsl list [group]`: config groups and their options, from the packaged conf/ folder,
and the tables of `metafsl reproduce` (`metafsl list table`).
`metafsl list algo <name>`: a method's arguments, their values and what they mean.

Reads the YAML files as text (no torch, no Hydra): instant.  `list algo <name>` imports the
method's class, whose docstring describes its arguments.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Tuple

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


def docstring_section(cls: type, title: str) -> List[str]:
    """The lines of section ``title`` (``Arguments:``, ``Example:``) of ``cls``'s own docstring,
    dedented by one level."""
    lines = inspect.cleandoc(cls.__dict__.get("__doc__") or "").splitlines()
    if f"{title}:" not in lines:
        return []
    body: List[str] = []
    for line in lines[lines.index(f"{title}:") + 1:]:
        if line and not line.startswith(" "):
            break
        body.append(line[4:])
    return [line for line in body if line.strip()]


def argument_descriptions(cls: type) -> Dict[str, str]:
    """{argument: description} from the ``Arguments:`` sections of ``cls`` and its bases (a
    subclass's own description first); a line indented further continues the one above."""
    found: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        name = None
        for line in docstring_section(klass, "Arguments"):
            if line.startswith(" ") and name:
                found[name] += " " + line.strip()
            else:
                name, _, text = line.partition(":")
                found[name.strip()] = text.strip()
    return found


def docstring_example(cls: type) -> List[str]:
    """The ``Example:`` of ``cls``'s docstring, or of the nearest base that has one."""
    for klass in cls.__mro__:
        lines = docstring_section(klass, "Example")
        if lines:
            return lines
    return []


def argument_row(key: str, value: Any, description: str, hint: Any) -> List[str]:
    """[argument, its YAML value, its description]; the allowed values of a ``Literal`` hint are
    added where the description does not name them all."""
    from metafsl.config import hint_rule

    rule = hint_rule(hint)
    if rule and rule.choices and not all(str(c) in description for c in rule.choices):
        description += f" One of: {', '.join(map(str, rule.choices))}."
    shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return [key, shown, description.strip()]


def option_arguments(group: str, option: str) -> Tuple[str, List[List[str]], List[str]]:
    """The class an option builds, a row per argument (``argument_row``) and its example."""
    from metafsl.config import target_hints, target_object
    from metafsl.options import shipped_option

    node = shipped_option(group, option)
    cls, hints = target_object(node["_target_"]), target_hints(node["_target_"])
    described = argument_descriptions(cls)
    rows = [argument_row(k, v, described.get(k, ""), hints.get(k)) for k, v in node.items()
            if not k.startswith("_") and k != "name"]
    return node["_target_"], rows, docstring_example(cls)


def describe_option(group: str, option: str) -> int:
    """``metafsl list algo <name>``: the option's arguments with their values and meanings."""
    from rich.markup import escape

    from metafsl.reporting.console import console, table

    if group != "algo":
        raise UserError(f"Only methods have an argument listing (metafsl list algo <name>); "
                        f"metafsl list {group} lists the {group} options.")
    target, rows, example = option_arguments(group, option)
    plain = dict(soft_wrap=True, highlight=False, markup=False)  # commands stay on one line
    console.print(f"{group}={option}: {describe(group, option)}", **plain)
    table(target, ["argument", "value", "description"], [[escape(c) for c in r] for r in rows])
    if example:
        console.print("Example:\n  " + "\n  ".join(example), **plain)
    return 0


def run(args: List[str]) -> int:
    from metafsl.reporting.console import table

    groups = list(LISTABLE)
    if args:
        if args[0] not in LISTABLE:
            raise UserError(f"Unknown config group '{args[0]}'; choose one of: {', '.join(LISTABLE)}.")
        if len(args) > 1:
            return describe_option(args[0], args[1])
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
