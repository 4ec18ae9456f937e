"""`metafsl test run=<run dir> [checkpoint=best|last] [out=<dir>] [overrides]`: evaluate a run's
checkpoint with the run's own config plus overrides (``metafsl.api.evaluate``)."""
from __future__ import annotations

from typing import List

from metafsl.arguments import boolean, parse
from metafsl.commands.base import Command
from metafsl.errors import UserError

OWN_KEYS = ("run", "checkpoint", "out", "overwrite", "hydra.run.dir")


def run(args: List[str]) -> int:
    from metafsl import api
    from metafsl.reporting.run_report import ConsoleReport

    own, overrides = parse(args, OWN_KEYS, "test")
    if not own.get("run"):
        raise UserError("metafsl test needs the run to evaluate: metafsl test run=<run dir>.")
    out_dir = own.get("out") or own.get("hydra.run.dir")
    api.evaluate(own["run"], overrides, own.get("checkpoint", "best"), out_dir,
                 boolean("overwrite", own.get("overwrite")), callbacks=[ConsoleReport()])
    return 0


COMMAND = Command(
    name="test",
    summary="evaluate a run's best checkpoint: metafsl test run=<run dir> [overrides]",
    usage="metafsl test run=<run dir> [checkpoint=best|last] [out=<dir>] [overwrite=true] [overrides]",
    description="""
Evaluates a run's checkpoint with the run's own config; overrides (episode=20w1s, dataset=...,
eval.episodes=..., protocol=lake20 protocol.root=<all_runs.zip>) apply on top.  The result is
printed, then added to <run dir>/summary.json under "tests" (earlier records are kept) and
written to its own dir (default: a new <run dir>/tests/<time>_<suffix>/; out=<dir> to choose,
overwrite=true to replace the result an existing out=<dir> holds).  A checkpoint whose algorithm
or backbone differs from the run's config is refused.""",
    examples=("metafsl test run=outputs/train/<run> episode=20w1s",
              "metafsl test run=outputs/train/<run> checkpoint=last eval.episodes=2000",
              "metafsl test run=outputs/train/<run> protocol=lake20 protocol.root=<all_runs.zip>"),
    run=run,
)
