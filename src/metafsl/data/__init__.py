"""Datasets: every format converges to a ``FewShotDataset`` (uint8 tensor + labels per split).

``DATASETS`` is the registry ``metafsl list dataset`` prints; ``load_dataset`` dispatches a
composed ``dataset`` config to its loader (imported lazily).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

from metafsl.errors import UserError

DATASETS = {
    "glyphs": "built-in procedurally generated handwritten glyphs (no files, no download)",
    "omniglot": "Omniglot (Lake et al. 2015), official release layout; Vinyals or Lake split",
    "mini_imagenet": "miniImageNet (Ravi & Larochelle 64/16/20), CSV release or learn2learn pickles",
    "tiered_imagenet": "tieredImageNet (Ren et al. 2018, 351/97/160), learn2learn pickles",
    "cifarfs": "CIFAR-FS (Bertinetto et al. 2019, 64/16/20) from the CIFAR-100 python archive",
    "fc100": "FC100 (Oreshkin et al. 2018, 60/20/20 by superclass) from the CIFAR-100 python archive",
    "cub": "CUB-200-2011 birds, Chen et al. 2019 split (100/50/50)",
    "folder": "your own images: <root>/<class>/* or <root>/{train,val,test}/<class>/*",
}

#: file-based loaders: dataset name -> module in metafsl.data with ``from_config(cfg, root, cache_dir)``
LOADERS = {"mini_imagenet": "mini_imagenet", "tiered_imagenet": "tiered_imagenet", "cifarfs": "cifar",
           "fc100": "cifar", "cub": "cub", "folder": "folder"}
#: default folder under paths.data_dir when it differs from the dataset name (one archive, two splits)
DEFAULT_FOLDER = {"cifarfs": "cifar100", "fc100": "cifar100"}


def dataset_root(cfg: Dict[str, Any], data_dir: str) -> Path:
    root = cfg.get("root") or os.path.join(data_dir, DEFAULT_FOLDER.get(cfg["name"], cfg["name"]))
    return Path(os.path.expanduser(str(root)))


def load_dataset(cfg: Dict[str, Any], paths: Dict[str, Any]):
    """Load (or fetch from the on-disk cache) the dataset described by ``cfg``; with
    ``trainval=true`` the validation classes join the training split."""
    ds = _load(cfg, paths)
    if cfg.get("trainval"):
        from metafsl.data.base import with_val_in_train  # noqa: PLC0415

        ds = with_val_in_train(ds)
    return ds


def _load(cfg: Dict[str, Any], paths: Dict[str, Any]):
    name = cfg["name"]
    cache_dir = str(paths.get("cache_dir") or "~/.cache/metafsl")
    if name == "glyphs":
        from metafsl.data import glyphs  # noqa: PLC0415
        from metafsl.data.cache import CacheSpec, cached_dataset  # noqa: PLC0415

        keys = ("n_classes", "examples_per_class", "image_size", "seed", "train_fraction", "val_fraction")
        kwargs = {k: cfg[k] for k in keys}
        spec = CacheSpec("glyphs", Path(os.path.expanduser(cache_dir)), cache_dir, kwargs, version=glyphs.VERSION)
        return cached_dataset(spec, lambda: glyphs.generate(**kwargs))
    if name == "omniglot":
        from metafsl.data import omniglot  # noqa: PLC0415

        return omniglot.load(dataset_root(cfg, paths["data_dir"]), image_size=cfg["image_size"],
                             split=cfg["split"], background=cfg["background"],
                             rotations=cfg["rotations"], lake_val_fraction=cfg["lake_val_fraction"],
                             cache_dir=cache_dir, download=cfg["download"])
    if name in LOADERS:
        import importlib  # noqa: PLC0415

        module = importlib.import_module(f"metafsl.data.{LOADERS[name]}")
        return module.from_config(cfg, dataset_root(cfg, paths["data_dir"]), cache_dir)
    raise UserError(f"Unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}.")
