"""Test episodes adapted one at a time: batch norm with the episode's own statistics
(``eval.bn=transductive``) and/or the backbone fine-tuned on the episode's support set
(``eval.finetune_steps``), both undone before the next episode (``metafsl.algorithms.test_time``).
This bypasses ``fast_eval`` (one embedding per distinct image), whose embeddings would be
those of the unadapted backbone."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch

from metafsl.algorithms.test_time import episode_statistics, finetuned


def episode_predictions(algorithm, sampler, idx: torch.Tensor, spec, on_progress: Optional[Callable] = None,
                        first: int = 0) -> torch.Tensor:
    """(E, n_way * n_query) predicted labels of the episodes ``idx``, episodes ``first..`` of an
    evaluation, each adapted on its own; the augmentations of episode ``i`` are drawn from a
    generator seeded with ``spec.seed + i``, the learner's own random draws from the global one
    seeded alike (``seeded``)."""
    predicted = []
    views = sampler.preprocess.finetune_views(spec.finetune_views) if spec.finetune_steps else None
    for i in range(len(idx)):
        task = sampler.tasks(idx[i: i + 1])
        gen = torch.Generator().manual_seed(spec.seed + first + i)
        with contextlib.ExitStack() as stack:
            stack.enter_context(seeded(spec.seed + first + i, sampler.device))
            stack.enter_context(finetuned(algorithm, task.support_x[0], task.support_y[0], task.n_way,
                                          spec.finetune_steps, spec.finetune_lr, gen, views))
            if spec.bn == "transductive":
                both = torch.cat([task.support_x[0], task.query_x[0]])
                stack.enter_context(episode_statistics(algorithm.backbone, both))
            predicted.append(_logits(algorithm, task, getattr(spec, "transductive", None)).argmax(-1).cpu())
        if on_progress is not None:
            on_progress(1)
    n_q = sampler.n_way * sampler.n_query
    return torch.cat(predicted) if predicted else torch.zeros(0, n_q, dtype=torch.long)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global random generators of the CPU and of ``device`` (a GPU) seeded with ``seed``
    inside, and restored afterwards: what a learner draws at random at test time then depends
    on its episodes alone, not on what ran before (one process or several scoring blocks)."""
    gpus = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        for gpu in gpus:
            torch.cuda.default_generators[gpu].manual_seed(seed)
        yield


def _logits(algorithm, task, rule=None) -> torch.Tensor:
    """The episode's query logits: the learner's own, or a transductive ``rule``
    (``eval.transductive``) on its embeddings."""
    if rule is None:
        return algorithm.episode_logits(task)
    with torch.no_grad():
        support, query = algorithm.embed_episodes(task)
    return rule(support, task.support_y, query, task.n_way)
