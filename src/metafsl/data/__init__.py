"""Datasets: every format converges to a ``FewShotDataset`` (uint8 tensor + labels per split).

Each option file ``conf/dataset/<name>.yaml`` names its loader with ``_target_`` (a ``load``
function of the format's module, imported when used); ``load_dataset`` calls it with the
file location resolved.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict


def dataset_root(cfg: Dict[str, Any], data_dir: str) -> Path:
    """``dataset.root``, or by default ``<paths.data_dir>/<name>``."""
    root = cfg.get("root") or os.path.join(data_dir, cfg["name"])
    return Path(os.path.expanduser(str(root)))


def load_dataset(cfg: Dict[str, Any], paths: Dict[str, Any]):
    """Load (or fetch from the on-disk cache) the dataset described by ``cfg``; with
    ``trainval=true`` the validation classes join the training split."""
    from metafsl import options

    node = options.with_target("dataset", cfg)
    if "root" in node:
        node["root"] = str(dataset_root(node, paths["data_dir"]))
    ds = options.instantiate("dataset", node, cache_dir=str(paths.get("cache_dir") or "~/.cache/metafsl"))
    if cfg.get("trainval"):
        from metafsl.data.base import with_val_in_train

        ds = with_val_in_train(ds)
    return ds
