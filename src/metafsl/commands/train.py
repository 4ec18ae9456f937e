"""`metafsl train [overrides]`: meta-train a learner on the composed config, validate, checkpoint,
then test it (``metafsl.api.train`` in the run dir Hydra chose)."""
from __future__ import annotations

from typing import List

from metafsl.commands.base import Command


def train_job(cfg) -> float:
    """One training (a Hydra task: ``metafsl train`` and each job of ``metafsl sweep``); returns the
    objective a sweeper maximises: validation accuracy, else test accuracy."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from metafsl import api
    from metafsl.commands.hydra_app import created_run_dir
    from metafsl.reporting.run_report import ConsoleReport

    hydra = HydraConfig.get()
    summary = api.train(cfg, Path(hydra.runtime.output_dir), list(hydra.overrides.task),
                        OmegaConf.create({"hydra": OmegaConf.to_container(hydra)}),
                        callbacks=[ConsoleReport()], created=created_run_dir(hydra.runtime.output_dir))
    return summary.objective


def run(args: List[str]) -> int:
    from metafsl.commands.hydra_app import run_app

    return run_app("train", train_job, args)


COMMAND = Command(
    name="train",
    summary="meta-train a learner on a composed config, then test it",
    usage="metafsl train [group=option ...] [key=value ...] [--cfg job]",
    description="""
Composes conf/train.yaml with your overrides, meta-trains in a new run dir
(outputs/train/<time>_<suffix>/, or hydra.run.dir=<dir>), validates, keeps checkpoints/best.pt
and last.pt, tests the best checkpoint and writes summary.json.  resume=true
hydra.run.dir=<dir> continues a stopped run; config=<file.yaml> runs an experiment file made by
`metafsl cp`; logger=csv|tensorboard|mlflow|wandb (or [csv,mlflow]) adds experiment loggers.""",
    examples=("metafsl train algo=maml dataset=omniglot episode=5w1s paths.data_dir=../shared/data",
              "metafsl train experiment=snell2017_omniglot_5w1s paths.data_dir=../shared/data",
              "metafsl train resume=true hydra.run.dir=outputs/train/<run>"),
    run=run,
    config="train",
    interrupted="Interrupted; resume with resume=true and the same hydra.run.dir.",
)
