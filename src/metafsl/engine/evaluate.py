"""Evaluation on fixed episodes: accuracy in percent, mean ± 1.96·std/sqrt(n)."""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Optional

import torch

from metafsl.data.base import FewShotSplit
from metafsl.data.sampler import EpisodeSampler, Pixels
from metafsl.engine import fast_eval

#: upper bound on images per evaluation forward pass (keeps memory flat for big episodes)
MAX_IMAGES_PER_BATCH = 2400


def mean_ci95(accs: torch.Tensor) -> Dict[str, float]:
    n = accs.numel()
    mean = float(accs.mean())
    std = float(accs.std()) if n > 1 else 0.0
    return {"acc": mean, "ci95": 1.96 * std / math.sqrt(n), "episodes": n}


def evaluate(algorithm, split: FewShotSplit, n_way: int, n_shot: int, n_query: int, episodes: int,
             seed: int, device, pixels: Optional[Pixels] = None, batch_episodes: int = 16,
             within_group: bool = False, split_name: str = "test", progress=None,
             runtime=None) -> Dict[str, float]:
    """Accuracy (percent) of ``algorithm`` over ``episodes`` episodes drawn with ``seed``.

    ``runtime`` (``metafsl.engine.runtime.Runtime``) supplies the autocast context (GPU bf16)."""
    sampler = EpisodeSampler(split, n_way, n_shot, n_query, device=device, seed=seed, pixels=pixels,
                             within_group=within_group, split_name=split_name)
    algorithm.check_episode(n_way, train=False)
    per_episode = n_way * (n_shot + n_query)
    step = max(1, min(batch_episodes, MAX_IMAGES_PER_BATCH // per_episode))
    was_training = algorithm.training
    algorithm.eval()
    accs = []
    task = progress.add_task(f"{split_name} {n_way}w{n_shot}s", total=episodes) if progress else None
    autocast = runtime.autocast() if runtime is not None else contextlib.nullcontext()
    try:
        with autocast:
            if fast_eval.supported(algorithm):  # metric methods: embed each distinct image once
                advance = (lambda n: progress.advance(task, n)) if progress is not None else None
                accs.append(fast_eval.episode_accuracies(algorithm, sampler, split.images, episodes,
                                                         MAX_IMAGES_PER_BATCH, step, advance))
            for start in range(0, episodes if not accs else 0, step):
                b = min(step, episodes - start)
                accs.append(algorithm.evaluate(sampler.sample(b)).float().cpu())
                if progress is not None:
                    progress.advance(task, b)
    finally:
        algorithm.train(was_training)
        if progress is not None:
            progress.remove_task(task)
    return mean_ci95(torch.cat(accs) * 100.0)
