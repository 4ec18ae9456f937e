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
    # Train on the training + validation classes (no validation; the last checkpoint is kept),
    # as Snell et al.'s released code does for its final models.
    trainval: bool = False


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


@dataclass
class TieredImageNetConfig(DatasetConfig):
    """tieredImageNet (Ren et al. 2018), learn2learn's pickles; 351/97/160 classes."""

    name: str = "tiered_imagenet"
    image_size: int = 84
    channels: int = 3
    normalize: str = "dataset"


@dataclass
class CifarFSConfig(DatasetConfig):
    """CIFAR-FS (Bertinetto et al. 2019) from the CIFAR-100 python archive; 64/16/20 classes."""

    name: str = "cifarfs"
    image_size: int = 32
    channels: int = 3
    normalize: str = "dataset"


@dataclass
class FC100Config(CifarFSConfig):
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 60/20/20 classes."""

    name: str = "fc100"


@dataclass
class CUBConfig(DatasetConfig):
    """CUB-200-2011 with Chen et al.'s (2019) 100/50/50 class split."""

    name: str = "cub"
    image_size: int = 84
    channels: int = 3
    normalize: str = "dataset"


# ----------------------------------------------------------------------------- protocol
@dataclass
class LakeRunsConfig:
    """Lake et al. (2015) one-shot classification runs (20 runs x 20 trials)."""

    name: str = "lake20"
    # all_runs.zip or its extracted folder; default: <paths.data_dir>/omniglot/all_runs.zip
    root: Optional[str] = None
    # The release draws ink dark on white; invert like the Omniglot loader (ink bright).
    invert: bool = True


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


@dataclass
class Conv4_32Config(Conv4Config):
    """conv4 with 32 filters per layer: Finn et al.'s (and Ravi & Larochelle's) miniImageNet setting."""

    name: str = "conv4_32"
    hidden: int = 32


@dataclass
class WRNConfig(BackboneConfig):
    """Wide ResNet (Zagoruyko & Komodakis 2016); WRN-28-10 as in Dhillon et al. 2020 / LEO."""

    name: str = "wrn28_10"
    depth: int = 28
    widen: int = 10
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
    # l2l: learn2learn's per-task MAML wrapper (reference);
    # vmap: all tasks of a meta-batch at once with torch.func (same gradients, faster).
    backend: str = "l2l"
    # MAML++ (Antoniou et al. 2019), l2l backend: learned per-step, per-tensor inner rates (LSLR);
    # multi-step loss (query loss after every inner step, annealed to the last over msl_iterations).
    per_step_lr: bool = False
    multi_step_loss: bool = False
    msl_iterations: int = 7500


@dataclass
class ProtoNetConfig(AlgoConfig):
    name: str = "protonet"
    # sqeuclidean (Snell et al.) | cosine
    distance: str = "sqeuclidean"
    # Scale of cosine logits (ignored for sqeuclidean).
    temperature: float = 10.0


@dataclass
class FOMAMLConfig(MAMLConfig):
    """First-order MAML (Finn et al. 2017, Sec. 5.2): same loop, no second derivatives."""

    name: str = "fomaml"
    first_order: bool = True


@dataclass
class MetaSGDConfig(AlgoConfig):
    name: str = "metasgd"
    # Per-parameter inner learning rates are initialised uniformly in [lr_init_min, lr_init_max].
    lr_init_min: float = 0.005
    lr_init_max: float = 0.1
    inner_steps: int = 1
    test_inner_steps: int = 1
    first_order: bool = False


@dataclass
class ANILConfig(AlgoConfig):
    name: str = "anil"
    inner_lr: float = 0.4
    inner_steps: int = 1
    test_inner_lr: Optional[float] = None  # default: inner_lr
    test_inner_steps: int = 3
    first_order: bool = False


@dataclass
class ReptileConfig(AlgoConfig):
    name: str = "reptile"
    # Inner loop: `inner_steps` minibatches of `inner_batch` support images, optimiser adam|sgd.
    inner_lr: float = 0.001
    inner_steps: int = 5
    inner_batch: int = 10
    inner_optimizer: str = "adam"
    test_inner_steps: int = 50
    test_inner_batch: int = 5
    # true: all queries in one batch (batch-norm statistics shared); false: each query alone
    # with the support set (Nichol et al.'s non-transductive protocol).
    transductive: bool = True


@dataclass
class MatchingNetConfig(AlgoConfig):
    name: str = "matchingnet"
    # Full context embeddings: bidirectional LSTM over the support set, attention LSTM for queries.
    fce: bool = False
    fce_steps: int = 5
    # Cosine similarities are multiplied by this before the softmax attention (paper: 1).
    temperature: float = 1.0


@dataclass
class RelationNetConfig(AlgoConfig):
    name: str = "relationnet"
    # Relation module: [f(x); f(x_i)] -> width -> hidden -> 1 (sigmoid).
    width: int = 64
    hidden: int = 8


@dataclass
class SiameseConfig(AlgoConfig):
    name: str = "siamese"
    # Weight same and different pairs equally in the binary cross-entropy.
    balance: bool = True


@dataclass
class MetaOptNetConfig(AlgoConfig):
    name: str = "metaoptnet"
    # svm (Crammer-Singer multi-class SVM) | ridge (ridge regression to one-hot targets)
    head: str = "svm"
    svm_c: float = 0.1
    # Unrolled accelerated projected-gradient iterations on the SVM dual (train / test).
    svm_steps: int = 50
    test_svm_steps: int = 200
    ridge_lambda: float = 50.0
    # Learned scale of the query logits (initial value).
    scale: float = 1.0
    label_smoothing: float = 0.1


@dataclass
class MANNConfig(AlgoConfig):
    name: str = "mann"
    controller_size: int = 200
    memory_slots: int = 128
    memory_size: int = 40
    read_heads: int = 4
    # Decay of the usage weights (least-recently-used access).
    gamma: float = 0.95
    # LayerNorm on the backbone's embeddings before the controller (see algorithms/mann.py).
    input_norm: bool = True


@dataclass
class MetaLSTMConfig(AlgoConfig):
    name: str = "metalstm"
    # Learner updates produced by the meta-learner per task (train / test).
    steps: int = 5
    test_steps: Optional[int] = None  # default: steps
    hidden: int = 20
    # Gradient/loss preprocessing of Andrychowicz et al. (2016).
    preprocess_p: float = 10.0
    forget_bias: float = 5.0
    input_bias: float = -5.0


@dataclass
class BaselineConfig(AlgoConfig):
    name: str = "baseline"
    # Pre-training: mini-batches of `batch_size` labelled images from all training classes
    # (one mini-batch per trainer iteration; trainer.meta_batch_size is not used).
    batch_size: int = 16
    # Test time: a new head fitted on the support set with the backbone frozen.
    finetune_epochs: int = 100
    finetune_batch: int = 4
    finetune_lr: float = 0.01
    finetune_momentum: float = 0.9
    finetune_dampening: float = 0.9
    finetune_weight_decay: float = 0.001


@dataclass
class BaselinePPConfig(BaselineConfig):
    name: str = "baselinepp"
    # Cosine-classifier scale; null: 2 for <= 200 classes, else 10 (as Chen et al.'s code).
    scale: Optional[float] = None


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
    # Wall-clock budget: stop (after a last validation + checkpoint) once training has run
    # this many minutes.  null = no limit.
    max_minutes: Optional[float] = None
    # Also write checkpoints/last.pt between validations every this many minutes (and on
    # SIGINT/SIGTERM), so a preempted run loses little; null = only at validations.
    checkpoint_every_minutes: Optional[float] = 5.0


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
class RuntimeConfig:
    """Speed settings (metafsl.engine.runtime); none of them changes the method."""

    # Linux/glibc: recycle freed memory in-process (removes page-fault time); results unchanged.
    cpu_allocator_cache: bool = True
    # GPU only (no-ops on CPU). off | bf16: autocast forward passes to bfloat16 (changes results).
    amp: str = "off"
    # NHWC conv weights/activations on CPU and GPU (same maths, different rounding; ~1.6x on CPU).
    channels_last: bool = True
    # GPU only: torch.compile the backbone's forward in place.
    compile: bool = False


@dataclass
class RunConfig:
    dataset: Any = MISSING
    backbone: Any = MISSING
    algo: Any = MISSING
    episode: EpisodeConfig = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
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
    # For `metafsl test`: a test protocol other than episodes (protocol=lake20); null: episodes.
    protocol: Any = None
    # Fraction of trainer.iterations (and of the validation/log cadence and LR-schedule steps)
    # to run: budget=0.1 is a quick approximate pass; summary.json records it.
    budget: float = 1.0
    # Extra metric sink besides metrics.jsonl (always written): none | tensorboard.
    logger: str = "none"
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
    ("dataset", "tiered_imagenet_schema"): TieredImageNetConfig,
    ("dataset", "cifarfs_schema"): CifarFSConfig,
    ("dataset", "fc100_schema"): FC100Config,
    ("dataset", "cub_schema"): CUBConfig,
    ("protocol", "lake20_schema"): LakeRunsConfig,
    ("backbone", "conv4_schema"): Conv4Config,
    ("backbone", "resnet12_schema"): ResNet12Config,
    ("backbone", "conv4_32_schema"): Conv4_32Config,
    ("backbone", "wrn28_10_schema"): WRNConfig,
    ("algo", "maml_schema"): MAMLConfig,
    ("algo", "protonet_schema"): ProtoNetConfig,
    ("algo", "fomaml_schema"): FOMAMLConfig,
    ("algo", "metasgd_schema"): MetaSGDConfig,
    ("algo", "anil_schema"): ANILConfig,
    ("algo", "reptile_schema"): ReptileConfig,
    ("algo", "matchingnet_schema"): MatchingNetConfig,
    ("algo", "relationnet_schema"): RelationNetConfig,
    ("algo", "siamese_schema"): SiameseConfig,
    ("algo", "metaoptnet_schema"): MetaOptNetConfig,
    ("algo", "mann_schema"): MANNConfig,
    ("algo", "metalstm_schema"): MetaLSTMConfig,
    ("algo", "baseline_schema"): BaselineConfig,
    ("algo", "baselinepp_schema"): BaselinePPConfig,
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
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("metafsl.dirname"):
        OmegaConf.register_new_resolver("metafsl.dirname", short_dirname)
    if not OmegaConf.has_resolver("metafsl.unique_dir"):
        from metafsl.engine.run_dir import hydra_unique_dir

        OmegaConf.register_new_resolver("metafsl.unique_dir", hydra_unique_dir, use_cache=True)
    _registered = True


def short_dirname(overrides: str, limit: int = 120) -> str:
    """A sweep job's dir name from its overrides: one path component (a '/' in a value such as
    ``dataset.root=../data`` becomes '_'), cut to ``limit`` characters plus a short hash of the
    whole when longer (file names are limited to 255 bytes)."""
    import hashlib

    name = overrides.replace("/", "_")
    if len(name) <= limit:
        return name
    return f"{name[:limit]}...{hashlib.sha1(overrides.encode()).hexdigest()[:8]}"
