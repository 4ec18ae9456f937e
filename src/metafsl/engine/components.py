"""Build the pieces of a run (device, data, preprocess, learner, training stream) from a composed config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from metafsl import options
from metafsl.algorithms.base import Algorithm
from metafsl.config import target_parameters
from metafsl.data import load_dataset
from metafsl.data.base import FewShotDataset, FewShotSplit
from metafsl.data.batches import BatchSampler
from metafsl.data.sampler import EpisodeSampler, Preprocess
from metafsl.engine import runtime
from metafsl.errors import UserError
from metafsl.models import weights


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for but no CUDA GPU is available here; use device=cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"Unknown device '{name}'; use auto, cpu, cuda or cuda:N.") from None


def make_preprocess(dataset_cfg: Dict[str, Any], ds: FewShotDataset, backbone=None) -> Preprocess:
    """uint8 -> float, the normalisation of a backbone's published weights if it has one
    (``input_normalization``, ``models/pretrained.py``), else ``dataset.normalize``."""
    norm = dataset_cfg.get("normalize", "none")
    published = getattr(backbone, "input_normalization", None)
    if published is not None:
        mean, std = published
    elif norm == "none":
        mean = std = None
    elif norm == "dataset":
        mean, std = ds.mean, ds.std
    else:
        raise UserError(f"Unknown dataset.normalize '{norm}'; choose one of: none, dataset.")
    return Preprocess(mean, std, dataset_cfg.get("augment", "none"))


@dataclass
class Components:
    device: torch.device
    dataset: FewShotDataset
    preprocess: Preprocess
    algorithm: Any
    runtime: Any = None  # metafsl.engine.runtime.Runtime (autocast, memory format, compile)


def build_learner(cfg: Dict[str, Any], channels: int, image_size: int, initialise: bool = False,
                  input_size: int | None = None):
    """The run's learner (``cfg.algo``) on its backbone (``cfg.backbone``), on the CPU; a method
    whose constructor takes ``n_way`` or ``n_shot`` gets the training episodes' (a tested run's
    config keeps the episodes it was trained on).  ``initialise``: the backbone starts from
    ``backbone.weights`` (a training; elsewhere the checkpoint's weights replace them);
    ``backbone.freeze`` applies always; ``input_size``: a checkpoint's recorded input size of a
    torchvision/timm backbone (rebuilt as trained)."""
    node = dict(cfg["backbone"])
    if input_size is not None and "input_size" in node:
        node["input_size"] = int(input_size)
    backbone = options.instantiate("backbone", node, channels=channels, image_size=image_size)
    if initialise:
        weights.initialise(backbone, cfg["backbone"].get("weights", "none"))
    if cfg["backbone"].get("freeze", False):
        weights.freeze(backbone)
    supplied = {"backbone": backbone}
    target = options.with_target("algo", cfg["algo"])["_target_"]
    params = target_parameters(target)
    for key in ("n_way", "n_shot"):  # the training episodes' way and shot, for methods that take them
        if key in params and key in cfg["episode"]["train"]:
            supplied[key] = cfg["episode"]["train"][key]
    return options.instantiate("algo", cfg["algo"], **supplied)


def build(cfg: Dict[str, Any], dataset: FewShotDataset | None = None, training: bool = True,
          initialise: bool = False, input_size: int | None = None) -> Components:
    """cfg is a plain (resolved) dict of the run config; ``training=False``: for a test of a
    trained run (a test-only dataset is welcome); ``initialise``, ``input_size``: see ``build_learner``."""
    device = resolve_device(cfg["device"])
    rt = runtime.from_config(cfg, device)
    ds = dataset if dataset is not None else load_dataset(cfg["dataset"], cfg["paths"])
    if training and set(ds.splits) == {"test"}:
        raise UserError(f"dataset={ds.name} is test-only (all its classes are test classes); train on another "
                        f"dataset, then test the run on it: metafsl test run=<run dir> dataset={ds.name}.")
    if training and ("train" not in ds.splits or "test" not in ds.splits):
        raise UserError(f"Dataset '{ds.name}' needs at least a train and a test split.")
    algorithm = build_learner(cfg, ds.channels, ds.image_size, initialise, input_size).to(device)
    rt.prepare(algorithm)
    preprocess = make_preprocess(cfg["dataset"], ds, getattr(algorithm, "backbone", None))
    return Components(device, ds, preprocess, algorithm, rt)


def parameter_groups(algorithm: Algorithm, backbone_lr: float | None) -> List[Dict[str, Any]]:
    """The optimiser's parameter groups: the learner's own trainable parameters (the optimiser's
    learning rate), then its backbone's (``backbone.lr``; None: the optimiser's too)."""
    backbone = getattr(algorithm, "backbone", None)
    inner = [p for p in backbone.parameters() if p.requires_grad] if backbone is not None else []
    seen = {id(p) for p in inner}
    own = [p for p in algorithm.parameters() if p.requires_grad and id(p) not in seen]
    group: Dict[str, Any] = {"params": inner}
    if backbone_lr is not None:
        group["lr"] = float(backbone_lr)
    return [{"params": own}, group]


def build_train_stream(learner: Algorithm, split: FewShotSplit, episode: Dict[str, Any],
                       device: torch.device, seed: int, preprocess: Preprocess):
    """What the training loop draws from, as ``learner.train_stream`` declares: the episodes of
    ``episode.train`` (meta-batches of tasks) or labelled mini-batches of ``learner.train_batch_size``
    images of all training classes.  Either has ``sample(n, train=True)`` and
    ``state_dict()``/``load_state_dict()`` (checkpoints).  The learner is first told the number of
    training classes (``prepare_training``)."""
    learner.prepare_training(split.n_classes)
    if learner.sees_training_images:
        learner.prepare_training_images(_image_batches(split, device, preprocess))
    if learner.train_stream == "batches":
        return BatchSampler(split, learner.train_batch_size, device, seed, preprocess)
    if learner.train_stream != "episodes":
        raise ValueError(f"{type(learner).__name__}.train_stream must be 'episodes' or 'batches', "
                         f"not {learner.train_stream!r}")
    train = episode["train"]
    return EpisodeSampler(split, train["n_way"], train["n_shot"], train["n_query"], device=device, seed=seed,
                          preprocess=preprocess, within_group=episode.get("within_alphabet", False),
                          split_name="train")


def _image_batches(split: FewShotSplit, device: torch.device, preprocess: Preprocess | None, size: int = 256):
    """The split's images, preprocessed (no augmentation), ``size`` at a time."""
    preprocess = preprocess or Preprocess()
    for start in range(0, len(split.images), size):
        yield preprocess(split.images[start:start + size].to(device), False)
