"""`metafsl train` (and each job of `metafsl sweep`): ``metafsl.api.train`` on the config Hydra
composed, in the run dir Hydra chose."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from metafsl.api import apply_budget, train
from metafsl.engine.summary import RunSummary

__all__ = ["apply_budget", "train_command"]


def train_command(cfg: DictConfig, created: Optional[bool] = None) -> RunSummary:
    hydra = HydraConfig.get()
    return train(cfg, Path(hydra.runtime.output_dir), list(hydra.overrides.task),
                 OmegaConf.create({"hydra": OmegaConf.to_container(hydra)}), created=created)
