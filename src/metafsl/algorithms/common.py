"""Small helpers shared by the metric-based learners."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from metafsl.data.sampler import TaskBatch


def embed_episodes(backbone: nn.Module, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
    """One backbone pass over all support and query images: (B, S, D), (B, Q, D)."""
    b, ns = batch.support_x.shape[:2]
    nq = batch.query_x.shape[1]
    z = backbone(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
    return z[: b * ns].view(b, ns, -1), z[b * ns:].view(b, nq, -1)


def class_sums(support: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Per-class sums of support embeddings: (B, S, D), (B, S) -> (B, n_way, D)."""
    onehot = nn.functional.one_hot(labels, n_way).to(support.dtype)
    return onehot.transpose(1, 2) @ support
