"""`metafsl cp experiment=<preset> <file.yaml>` (or `table=<name>`): copy a shipped preset to
edit, as torchtune's `tune cp`; the copy runs with `metafsl train config=<file.yaml>` (a table:
`metafsl reproduce table=<file.yaml>`)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

from metafsl.arguments import boolean, parse
from metafsl.commands.base import Command
from metafsl.conf import CONF_DIR, group_options
from metafsl.errors import UserError

#: what can be copied, and the command that runs the copy
COPYABLE = {"experiment": "metafsl train config={file}", "table": "metafsl reproduce table={file}"}


def run(args: List[str]) -> int:
    from metafsl.reporting import console

    own, rest = parse(args, (*COPYABLE, "overwrite"), "cp")
    chosen = [k for k in COPYABLE if own.get(k)]
    if len(chosen) != 1 or len(rest) != 1 or "=" in rest[0]:
        raise UserError("metafsl cp needs one preset and one file: metafsl cp experiment=<preset> <file.yaml> "
                        "(or table=<name> <file.yaml>).")
    group, name, target = chosen[0], own[chosen[0]], Path(rest[0])
    if name not in group_options(group):
        raise UserError(f"Unknown {group} '{name}'; choose one of: {', '.join(group_options(group))}.")
    if target.suffix not in (".yaml", ".yml"):
        raise UserError(f"{target} must end in .yaml, e.g. {target.with_suffix('.yaml')}.")
    if target.is_dir():
        raise UserError(f"{target} is a directory; give a file name such as {target / (name + '.yaml')}.")
    if target.exists() and not boolean("overwrite", own.get("overwrite")):
        raise UserError(f"{target} already exists; pass overwrite=true to replace it, or another file name.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CONF_DIR / group / f"{name}.yaml", target)
    except OSError as exc:
        raise UserError(f"Cannot write {target} ({exc.strerror or exc.__class__.__name__}).") from None
    console.info(f"Copied {group} '{name}' to {target}; edit it, then run it with:\n  "
                 + COPYABLE[group].format(file=target))
    return 0


COMMAND = Command(
    name="cp",
    summary="copy a preset to edit: metafsl cp experiment=<preset> <file.yaml>",
    usage="metafsl cp experiment=<preset> <file.yaml> | metafsl cp table=<name> <file.yaml> [overwrite=true]",
    description="""
Copies a shipped experiment preset (conf/experiment/) or reproduction table (conf/table/) to a
file of yours.  Edit it, then run it: an experiment with `metafsl train config=<file.yaml>
[overrides]` (also `metafsl sweep` and `metafsl validate`), a table with `metafsl reproduce
table=<file.yaml>`.  An existing file is replaced only with overwrite=true.""",
    examples=("metafsl cp experiment=snell2017_omniglot_5w1s my_protonet.yaml",
              "metafsl train config=my_protonet.yaml paths.data_dir=../shared/data",
              "metafsl cp table=snell2017_omniglot my_table.yaml"),
    run=run,
)
