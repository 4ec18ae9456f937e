"""Relation Network (Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare: Relation
Network for Few-Shot Learning", CVPR 2018).

Support embeddings are summed per class (the paper's K-shot rule); each (query, class) pair
is concatenated and scored by a learned relation module with a sigmoid output, so relation
scores lie in [0, 1].

Another shot at test time: a sum over K shots grows with K, so a module trained on 1-shot
sums saw class features K times smaller than a 5-shot test gives it (such a model scored at
chance).  The class feature is therefore the class *mean* times the training shot
(``n_shot``, supplied by the run from ``episode.train``): exactly the paper's sum at the
training shot, and the same scale at any other shot (or with classes of different sizes).
Checkpoints written before keep their weights and, at their training shot, their scores.  Training regresses the scores onto the one-hot labels with a mean
squared error.  The paper's relation module is two conv blocks (64 filters) + FC 8 + FC 1
on feature maps; backbones here return vectors, so the conv blocks become one
fully-connected layer of the same width (with batch norm and ReLU).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.base import accuracy
from metafsl.algorithms.metric import MetricLearner
from metafsl.data.sampler import TaskBatch


class RelationModule(nn.Module):
    """[a; b] -> width (BN, ReLU) -> hidden (ReLU) -> 1 -> sigmoid: a score in [0, 1]."""

    def __init__(self, dim: int, width: int = 64, hidden: int = 8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * dim, width), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1),
        )

    def forward(self, query: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, Q, D), (B, N, D) -> relation scores (B, Q, N) in [0, 1]."""
        b, q, d = query.shape
        n = classes.shape[1]
        pairs = torch.cat([query.unsqueeze(2).expand(b, q, n, d), classes.unsqueeze(1).expand(b, q, n, d)], -1)
        return torch.sigmoid(self.net(pairs.reshape(-1, 2 * d))).view(b, q, n)


def class_sums(support: torch.Tensor, labels: torch.Tensor, n_way: int, shot: int) -> torch.Tensor:
    """Per-class sums of support embeddings rescaled to ``shot`` examples (``shot`` x the class
    mean; the plain sum when a class has ``shot`` examples): (B, S, D), (B, S) -> (B, n_way, D)."""
    onehot = F.one_hot(labels, n_way).to(support.dtype)
    counts = onehot.sum(1).clamp_min(1).unsqueeze(-1)  # (B, n_way, 1)
    return (onehot.transpose(1, 2) @ support) * (shot / counts)


class RelationNet(MetricLearner):
    """A learned relation score between a query and each class (see the module docstring).

    Arguments:
        width: first layer of the relation module, [f(x); f(x_i)] -> width.
        hidden: second layer of the relation module, width -> hidden -> 1 (sigmoid).
        n_shot: the training episodes' shot (supplied by the run): class features are sums
            rescaled to this many examples, so another test shot keeps their scale.

    Example:
        metafsl train algo=relationnet algo.width=128
    """

    def __init__(self, backbone: nn.Module, width: int = 64, hidden: int = 8, n_shot: int = 1):
        super().__init__(backbone)
        self.n_shot = int(n_shot)
        self.relation = RelationModule(backbone.out_features, int(width), int(hidden))

    def logits_from_embeddings(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                               n_way: int) -> torch.Tensor:
        """Relation scores (B, Q, n_way) in [0, 1]; the arg-max is the prediction."""
        return self.relation(query, class_sums(support, support_y, n_way, self.n_shot))

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        scores = self.batch_logits(batch)
        target = F.one_hot(batch.query_y, batch.n_way).to(scores.dtype)
        return F.mse_loss(scores, target), accuracy(scores.detach(), batch.query_y).mean()
