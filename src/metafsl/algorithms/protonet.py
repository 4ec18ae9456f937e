"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is represented by the mean embedding (prototype) of its support examples; a
query is classified by a softmax over negative squared Euclidean distances to the
prototypes.  Way and shot at training may differ from test (Snell et al. train 60-way).
"""
from __future__ import annotations

import torch
from torch import nn

from metafsl.algorithms.base import Algorithm
from metafsl.data.sampler import TaskBatch
from metafsl.errors import UserError


def prototypes(support: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Class means: support (B, N, D), labels (B, N) in 0..n_way-1 -> (B, n_way, D)."""
    onehot = nn.functional.one_hot(labels, n_way).to(support.dtype)  # (B, N, n_way)
    sums = onehot.transpose(1, 2) @ support
    return sums / onehot.sum(1).clamp_min(1).unsqueeze(-1)


def sq_euclidean_logits(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Negative squared Euclidean distances: (B, Q, D), (B, K, D) -> (B, Q, K)."""
    q2 = (query * query).sum(-1, keepdim=True)
    p2 = (protos * protos).sum(-1).unsqueeze(1)
    return -(q2 - 2 * query @ protos.transpose(1, 2) + p2).clamp_min(0)


def cosine_logits(query: torch.Tensor, protos: torch.Tensor, scale: float) -> torch.Tensor:
    q = nn.functional.normalize(query, dim=-1)
    p = nn.functional.normalize(protos, dim=-1)
    return scale * q @ p.transpose(1, 2)


class ProtoNet(Algorithm):
    def __init__(self, backbone: nn.Module, distance: str = "sqeuclidean", temperature: float = 10.0):
        super().__init__(backbone)
        if distance not in ("sqeuclidean", "cosine"):
            raise UserError(f"Unknown ProtoNet distance '{distance}'; choose one of: sqeuclidean, cosine.")
        self.distance = distance
        self.temperature = temperature

    def embed_task(self, batch: TaskBatch):
        """One backbone pass over all support and query images of all tasks."""
        b, ns = batch.support_x.shape[:2]
        nq = batch.query_x.shape[1]
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        z = self.backbone(x)
        return z[: b * ns].view(b, ns, -1), z[b * ns:].view(b, nq, -1)

    def task_logits(self, batch: TaskBatch, train: bool) -> torch.Tensor:
        support, query = self.embed_task(batch)
        return self.logits_from_embeddings(support, batch.support_y, query, batch.n_way)

    def logits_from_embeddings(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                               n_way: int) -> torch.Tensor:
        """Query logits from embeddings (also lets evaluation embed each distinct image once,
        see ``metafsl.engine.fast_eval``)."""
        protos = prototypes(support, support_y, n_way)
        if self.distance == "cosine":
            return cosine_logits(query, protos, self.temperature)
        return sq_euclidean_logits(query, protos)
