"""The packaged config folder: one sub-folder per config group, one YAML per option."""
from __future__ import annotations

from pathlib import Path
from typing import List

CONF_DIR = Path(__file__).parent
GROUPS = ("dataset", "backbone", "algo", "episode", "trainer", "eval", "experiment", "protocol",
          "hparams_search", "logger")


def group_options(group: str) -> List[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
