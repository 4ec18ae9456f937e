"""`metafsl demo [out=<dir>] [train overrides]` (what `make demo` runs)."""
from __future__ import annotations

from pathlib import Path
from typing import List

from metafsl.arguments import parse
from metafsl.commands.base import Command

EXPERIMENTS = ("demo_protonet", "demo_maml")


def run(args: List[str]) -> int:
    from metafsl import api
    from metafsl.engine.run_dir import unique_dir
    from metafsl.reporting.run_report import ConsoleReport
    from metafsl.reporting.sweeps import write_summary

    own, overrides = parse(args, ("out", "hydra.sweep.dir"), "demo")
    out = own.get("out") or own.get("hydra.sweep.dir")  # the latter: what `metafsl demo` took as a sweep
    # every config composes before the first training starts
    runs = [([f"experiment={name}", *overrides], name) for name in EXPERIMENTS]
    configs = [api.compose("train", argv) for argv, _ in runs]
    root = Path(out) if out else \
        unique_dir(Path(api.resolved(configs[0])["paths"]["output_dir"]) / "demo")
    for i, ((argv, name), cfg) in enumerate(zip(runs, configs)):
        api.train(cfg, root / f"{i}_experiment={name}", overrides=argv, callbacks=[ConsoleReport()])
    write_summary(root)
    return 0


COMMAND = Command(
    name="demo",
    summary="ProtoNet and MAML on built-in glyphs 5-way 1-shot vs. untrained (what `make demo` runs)",
    usage="metafsl demo [out=<dir>] [train overrides]",
    description="""
ProtoNet and MAML meta-trained on the built-in glyphs dataset, tested 5-way 1-shot on 600 fixed
episodes next to the same backbone untrained.  Each method is a run dir under <out> (default: a
new <paths.output_dir>/demo/<time>_<suffix>/), compared in <out>/sweep_summary.csv.""",
    examples=("metafsl demo", "metafsl demo out=outputs/my_demo trainer.iterations=100"),
    run=run,
    interrupted="Interrupted; rerun with resume=true out=<the demo dir> to continue.",
)
