"""Siamese neural networks for one-shot image recognition (Koch, Zemel & Salakhutdinov,
ICML Deep Learning Workshop 2015).

Twin embeddings (the shared backbone) of two images are compared by a learned weighted L1
distance, p(same) = sigmoid(sum_j w_j |f(x1)_j - f(x2)_j| + b), trained with binary
cross-entropy on same/different pairs.  Pairs are formed from each training episode: every
(query, support) pair, labelled same when their classes match; with ``balance=true`` the
(fewer) same pairs and the different pairs weigh equally, as in Koch et al.'s balanced pair
sampling.  A query is classified as the class of its most similar support example
(the arg-max of p(same) over the support set; the per-class score is the maximum).
The distance weights start non-positive, so that an untrained network already ranks
closer pairs as more similar.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.base import accuracy
from metafsl.algorithms.metric import MetricLearner
from metafsl.data.sampler import TaskBatch


def pair_labels(query_y: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
    """1 where a (query, support) pair shares its class: (B, Q), (B, S) -> (B, Q, S) float."""
    return (query_y.unsqueeze(-1) == support_y.unsqueeze(1)).float()


def nearest_support_scores(pair_logits: torch.Tensor, support_y: torch.Tensor, n_way: int) -> torch.Tensor:
    """Per-class score = best pair score among that class's support examples: (B, Q, S) -> (B, Q, n_way)."""
    onehot = F.one_hot(support_y, n_way).bool().unsqueeze(1)  # (B, 1, S, n_way)
    masked = pair_logits.unsqueeze(-1).masked_fill(~onehot, float("-inf"))
    return masked.amax(dim=2)


class Siamese(MetricLearner):
    """Same/different pairs; a query gets the class of its most similar support example.

    Arguments:
        balance: weight same and different pairs equally in the binary cross-entropy.

    Example:
        metafsl train algo=siamese algo.balance=false
    """

    def __init__(self, backbone: nn.Module, balance: bool = True):
        super().__init__(backbone)
        self.balance = bool(balance)
        self.distance = nn.Linear(backbone.out_features, 1)  # weighted L1 distance -> logit
        with torch.no_grad():  # start with "closer means more similar" (non-positive weights)
            self.distance.weight.abs_().neg_()
            self.distance.bias.zero_()

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logit of p(same) for every pair: (B, Q, D), (B, S, D) -> (B, Q, S)."""
        return self.distance((a.unsqueeze(2) - b.unsqueeze(1)).abs()).squeeze(-1)

    def logits_from_embeddings(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                               n_way: int) -> torch.Tensor:
        return nearest_support_scores(self.pair_logits(query, support), support_y, n_way)

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        support, query = self.embed_episodes(batch)
        logits = self.pair_logits(query, support)
        same = pair_labels(batch.query_y, batch.support_y)
        if self.balance:
            n_same = same.sum().clamp_min(1)
            n_diff = (1 - same).sum().clamp_min(1)
            weight = same * (0.5 / n_same) + (1 - same) * (0.5 / n_diff)
            loss = F.binary_cross_entropy_with_logits(logits, same, weight=weight, reduction="sum")
        else:
            loss = F.binary_cross_entropy_with_logits(logits, same)
        predictions = nearest_support_scores(logits.detach(), batch.support_y, batch.n_way)
        return loss, accuracy(predictions, batch.query_y).mean()
