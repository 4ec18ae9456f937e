"""`metafsl validate [overrides]` (or `run=<run dir>` for a test): every check made before work,
without training; all problems listed, exit 0 or 2."""
from __future__ import annotations

from typing import List

from metafsl.arguments import parse
from metafsl.commands.base import Command
from metafsl.errors import UserError


def run(args: List[str]) -> int:
    from metafsl import api
    from metafsl.reporting import console

    own, overrides = parse(args, ("run", "checkpoint"), "validate")
    problems = api.validate(overrides, own.get("run"), own.get("checkpoint", "best"))
    what = f"metafsl test run={own['run']}" if own.get("run") else "metafsl train"
    if not problems:
        console.info(f"OK: {what} {' '.join(overrides)} passes every check made before work "
                     "(keys, types and ranges, arguments, loggers, data, episodes, checkpoint).")
        return 0
    for i, problem in enumerate(problems, 1):
        console.error(f"({i}/{len(problems)}) {problem}")
    raise UserError(f"{len(problems)} problem(s) found; {what} would refuse to start.")


COMMAND = Command(
    name="validate",
    summary="check a config (and its data) without training: metafsl validate <overrides>",
    usage="metafsl validate [train overrides] | metafsl validate run=<run dir> [checkpoint=best|last] "
          "[test overrides]",
    description="""
Composes the config `metafsl train` (or, with run=, `metafsl test`) would run with and makes
every check done before work: unknown keys and options, types and ranges, the arguments each
_target_ takes, the loggers' packages, the data being present, the episode shape against the
data and the learner, a resumed run's settings (hydra.run.dir=... resume=true) and a tested
checkpoint's architecture.  Lists all problems, not only the first; exit code 0 when there are
none, else 2.  Nothing is trained and nothing is written.""",
    examples=("metafsl validate algo=maml dataset=omniglot paths.data_dir=../shared/data",
              "metafsl validate config=my_experiment.yaml",
              "metafsl validate run=outputs/train/<run> episode=20w1s"),
    run=run,
)
