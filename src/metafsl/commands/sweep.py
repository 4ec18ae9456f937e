"""`metafsl sweep [overrides with comma lists]`: a Hydra multirun of `train`, then
sweep_summary.csv in the sweep dir, shown sorted by validation accuracy."""
from __future__ import annotations

from typing import List

from metafsl.commands.base import Command


def run(args: List[str]) -> int:
    from metafsl.commands.hydra_app import run_app
    from metafsl.commands.train import train_job

    return run_app("sweep", train_job, args, multirun=True)


COMMAND = Command(
    name="sweep",
    summary="Hydra multirun of train over comma lists; writes sweep_summary.csv",
    usage="metafsl sweep [key=a,b ...] [hparams_search=<search>] [hydra/launcher=<launcher>]",
    description="""
One training per combination of the comma lists (or per trial of an Optuna search), each in
outputs/sweep/<time>_<suffix>/<job>_<overrides>/, then sweep_summary.csv with every job's
validation and test accuracy, shown sorted by validation accuracy.  A stopped sweep resumes with
the same command plus resume=true hydra.sweep.dir=<its dir>.""",
    examples=("metafsl sweep algo=maml,protonet trainer.iterations=500",
              "metafsl sweep algo=protonet hparams_search=protonet_optuna hydra.sweeper.n_trials=30",
              "metafsl sweep algo=maml,protonet hydra/launcher=joblib hydra.launcher.n_jobs=2"),
    run=run,
    config="sweep",
    interrupted="Interrupted; rerun the same sweep with resume=true hydra.sweep.dir=<its dir>.",
)
