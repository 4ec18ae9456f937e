"""Evaluation on fixed episodes: accuracy in percent, mean ± 1.96·std/sqrt(n)."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from metafsl.data.base import FewShotSplit
from metafsl.data.sampler import EpisodeSampler, Preprocess
from metafsl.engine import fast_eval
from metafsl.engine.callbacks import Callback

#: upper bound on images per evaluation forward pass (keeps memory flat for big episodes)
MAX_IMAGES_PER_BATCH = 2400


def mean_ci95(accs: torch.Tensor) -> Dict[str, float]:
    n = accs.numel()
    mean = float(accs.mean())
    std = float(accs.std()) if n > 1 else 0.0
    return {"acc": mean, "ci95": 1.96 * std / math.sqrt(n), "episodes": n}


@dataclass(frozen=True)
class EvalSpec:
    """What an evaluation measures: the episode shape, how many episodes, and their seed."""

    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    seed: int
    batch_episodes: int = 16
    #: all classes of an episode from one alphabet / group
    within_group: bool = False
    #: the split's name (messages, progress bars)
    split: str = "test"

    @classmethod
    def from_config(cls, cfg: Dict[str, Any], validation: bool = False) -> "EvalSpec":
        """A run's validation spec, or its test spec (on ``eval.split``)."""
        ep, ev = cfg["episode"], cfg["eval"]
        test = ep["test"]
        return cls(test["n_way"], test["n_shot"], test["n_query"],
                   episodes=cfg["trainer"]["val_episodes"] if validation else ev["episodes"],
                   seed=ev["seed"] + 1 if validation else ev["seed"], batch_episodes=ev["batch_episodes"],
                   within_group=bool(ep.get("within_alphabet", False)),
                   split="val" if validation else ev.get("split", "test"))


def evaluate(algorithm, split: FewShotSplit, spec: EvalSpec, device="cpu", preprocess: Optional[Preprocess] = None,
             callbacks: Optional[Callback] = None, runtime=None) -> Dict[str, float]:
    """Accuracy (percent) of ``algorithm`` on ``split`` over the episodes ``spec`` describes.

    ``callbacks`` hear of the progress (``on_eval_start/advance/end``); ``runtime``
    (``metafsl.engine.runtime.Runtime``) supplies the autocast context (GPU bf16)."""
    n_way, n_shot, n_query = spec.n_way, spec.n_shot, spec.n_query
    episodes, batch_episodes, split_name = spec.episodes, spec.batch_episodes, spec.split
    seed, within_group = spec.seed, spec.within_group
    sampler = EpisodeSampler(split, n_way, n_shot, n_query, device=device, seed=seed, preprocess=preprocess,
                             within_group=within_group, split_name=split_name)
    algorithm.check_episode(n_way, train=False)
    per_episode = n_way * (n_shot + n_query)
    step = max(1, min(batch_episodes, MAX_IMAGES_PER_BATCH // per_episode))
    was_training = algorithm.training
    algorithm.eval()
    accs = []
    callbacks = callbacks or Callback()
    callbacks.on_eval_start(f"{split_name} {n_way}w{n_shot}s", episodes)
    autocast = runtime.autocast() if runtime is not None else contextlib.nullcontext()
    try:
        with autocast:
            if fast_eval.supported(algorithm):  # metric methods: embed each distinct image once
                accs.append(fast_eval.episode_accuracies(algorithm, sampler, split.images, episodes,
                                                         MAX_IMAGES_PER_BATCH, step, callbacks.on_eval_advance))
            for start in range(0, episodes if not accs else 0, step):
                b = min(step, episodes - start)
                accs.append(algorithm.evaluate(sampler.sample(b)).float().cpu())
                callbacks.on_eval_advance(b)
    finally:
        algorithm.train(was_training)
        callbacks.on_eval_end()
    return mean_ci95(torch.cat(accs) * 100.0)
