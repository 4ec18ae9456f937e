"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

Each option file in ``conf/<group>/`` starts its defaults list with the schema it
fills (``- maml_schema``), so a misspelled key or a value of the wrong type fails at
composition time with Hydra's own message instead of deep inside a run.

This module imports no torch: ``metafsl --help`` and ``metafsl list`` stay instant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


# ----------------------------------------------------------------------------- paths
@dataclass
class PathsConfig:
    # Where datasets live (each under <data_dir>/<name>/); METAFSL_DATA_DIR overrides.
    data_dir: str = "${oc.env:METAFSL_DATA_DIR,data}"
    # Root of run dirs: <output_dir>/<command>/<date>_<time>/.
    output_dir: str = "${oc.env:METAFSL_OUTPUT_DIR,outputs}"
    # Decode caches go beside the data; when that folder is read-only, here instead.
    cache_dir: str = "${oc.env:METAFSL_CACHE_DIR,'~/.cache/metafsl'}"


# ----------------------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    name: str = MISSING
    # Explicit location of the files; default: <paths.data_dir>/<name>.
    root: Optional[str] = None
    image_size: int = 28
    channels: int = 1
    # Pixel normalisation applied on the device: none | dataset (per-channel mean/std).
    normalize: str = "none"
    # Training-time augmentation: none | metaoptnet (random crop w/ padding, colour jitter, flip).
    augment: str = "none"
    download: bool = False


@dataclass
class GlyphsConfig(DatasetConfig):
    name: str = "glyphs"
    n_classes: int = 1200
    examples_per_class: int = 20
    # Fractions of classes for train / val (the rest is test); classes never overlap.
    train_fraction: float = 0.64
    val_fraction: float = 0.16
    seed: int = 0


@dataclass
class OmniglotConfig(DatasetConfig):
    name: str = "omniglot"
    # vinyals: Vinyals et al. / Snell et al. character split (1028/172/423);
    # lake: the 30 background alphabets to train, the 20 evaluation alphabets to test.
    split: str = "vinyals"
    # With split=lake: images_background | images_background_small1 | images_background_small2.
    background: str = "images_background"
    # Fraction of lake-split training characters held out for validation.
    lake_val_fraction: float = 0.1
    rotations: bool = True


@dataclass
class MiniImageNetConfig(DatasetConfig):
    name: str = "mini_imagenet"
    image_size: int = 84
    channels: int = 3
    normalize: str = "dataset"
    # auto (CSV release if present, else learn2learn pickles) | csv | pickle
    format: str = "auto"


@dataclass
class FolderConfig(DatasetConfig):
    name: str = "folder"
    image_size: int = 84
    channels: int = 3
    normalize: str = "dataset"
    # <root>/<class>/* is split by class with these fractions (seeded);
    # <root>/{train,val,test}/<class>/* is used as given.
    train_fraction: float = 0.6
    val_fraction: float = 0.2
    seed: int = 0


# ----------------------------------------------------------------------------- backbone
@dataclass
class BackboneConfig:
    name: str = MISSING


@dataclass
class Conv4Config(BackboneConfig):
    name: str = "conv4"
    hidden: int = 64
    layers: int = 4


@dataclass
class ResNet12Config(BackboneConfig):
    name: str = "resnet12"
    wider: bool = True  # channels 64-160-320-640 (MetaOptNet) instead of 64-128-256-512
    dropblock: float = 0.0
    dropout: float = 0.0


# ----------------------------------------------------------------------------- algo
@dataclass
class AlgoConfig:
    name: str = MISSING


@dataclass
class MAMLConfig(AlgoConfig):
    name: str = "maml"
    inner_lr: float = 0.4
    inner_steps: int = 1
    # Test-time inner loop (Finn et al.: 1 step at train, 3 at test on Omniglot).
    test_inner_lr: Optional[float] = None  # default: inner_lr
    test_inner_steps: int = 3
    first_order: bool = False
    # l2l: learn2learn's per-task MAML wrapper (reference).
    backend: str = "l2l"


@dataclass
class ProtoNetConfig(AlgoConfig):
    name: str = "protonet"
    # sqeuclidean (Snell et al.) | cosine
    distance: str = "sqeuclidean"
    # Scale of cosine logits (ignored for sqeuclidean).
    temperature: float = 10.0


# ----------------------------------------------------------------------------- episodes
@dataclass
class EpisodeSpec:
    n_way: int = 5
    n_shot: int = 1
    n_query: int = 15


@dataclass
class EpisodeConfig:
    name: str = "5w1s"
    train: EpisodeSpec = field(default_factory=EpisodeSpec)
    test: EpisodeSpec = field(default_factory=EpisodeSpec)
    # All classes of a task from one alphabet (Omniglot) / group.
    within_alphabet: bool = False


# ----------------------------------------------------------------------------- trainer / eval
@dataclass
class TrainerConfig:
    name: str = "default"
    iterations: int = 2000
    meta_batch_size: int = 1
    # Instantiated with hydra.utils.instantiate(..., params=...): _partial_ optimisers.
    optimizer: Any = field(
        default_factory=lambda: {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
    )
    # Optional LR schedule, e.g. torch.optim.lr_scheduler.StepLR (_partial_), stepped per iteration.
    scheduler: Any = None
    val_every: int = 500
    val_episodes: int = 200
    log_every: int = 10
    grad_clip: Optional[float] = None


@dataclass
class EvalConfig:
    name: str = "default"
    episodes: int = 600
    # Test episodes are drawn from a generator seeded with this, so every method sees
    # the same episodes.
    seed: int = 1234
    # Episodes per forward pass during evaluation (metric methods batch them).
    batch_episodes: int = 16
    split: str = "test"


# ----------------------------------------------------------------------------- top level
@dataclass
class Published:
    """What a paper reports for an experiment preset (accuracy in percent)."""

    acc: Optional[float] = None
    ci95: Optional[float] = None
    citation: Optional[str] = None


@dataclass
class RunConfig:
    dataset: Any = MISSING
    backbone: Any = MISSING
    algo: Any = MISSING
    episode: EpisodeConfig = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    # auto | cpu | cuda | cuda:N
    device: str = "auto"
    # Continue the run in hydra.run.dir from its checkpoints/last.pt.
    resume: bool = False
    # Evaluate on the test split at the end of training.
    test: bool = True
    verbose: bool = False
    # For `metafsl test`: the run dir whose best checkpoint is evaluated.
    run: Optional[str] = None
    # Which checkpoint `metafsl test` evaluates: best | last.
    checkpoint: str = "best"
    # Set by experiment presets.
    name: str = ""
    published: Published = field(default_factory=Published)
    tags: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)


_SCHEMAS = {
    ("dataset", "glyphs_schema"): GlyphsConfig,
    ("dataset", "omniglot_schema"): OmniglotConfig,
    ("dataset", "mini_imagenet_schema"): MiniImageNetConfig,
    ("dataset", "folder_schema"): FolderConfig,
    ("backbone", "conv4_schema"): Conv4Config,
    ("backbone", "resnet12_schema"): ResNet12Config,
    ("algo", "maml_schema"): MAMLConfig,
    ("algo", "protonet_schema"): ProtoNetConfig,
    ("episode", "episode_schema"): EpisodeConfig,
    ("trainer", "trainer_schema"): TrainerConfig,
    ("eval", "eval_schema"): EvalConfig,
}

_registered = False


def register_configs() -> None:
    """Register the schemas (idempotent)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for (group, name), node in _SCHEMAS.items():
        cs.store(group=group, name=name, node=node)
    _registered = True
