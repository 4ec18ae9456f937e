"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is represented by the mean embedding (prototype) of its support examples; a
query is classified by a softmax over negative squared Euclidean distances to the
prototypes.  Way and shot at training may differ from test (Snell et al. train 60-way).

One task (``adapt``, ``metafsl predict``) goes through learn2learn's ``PrototypicalClassifier``.
Batches of tasks (training, evaluation, the fast evaluation path) use the batched functions
below instead: on 1000 episodes of 64-d embeddings (1 CPU thread) they take 15 ms against
234 ms for learn2learn's classifier task by task at 5-way 1-shot, 106 against 779 ms at
20-way 5-shot (docs/benchmarks.md); the logits agree to float rounding.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from metafsl._l2l import learn2learn
from metafsl.algorithms.base import Classifier
from metafsl.algorithms.metric import MetricLearner
from metafsl.algorithms.standalone import SupportRule


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


class ProtoNet(MetricLearner):
    """Nearest class mean of the support embeddings (see the module docstring).

    Arguments:
        distance: sqeuclidean, squared Euclidean distance (Snell et al.); cosine, scaled cosine similarity.
        temperature: scale of cosine logits (not used with sqeuclidean).
        metric_scale: fixed, the logits as they are; learned, multiplied by a learned scalar alpha
            (TADAM's learned metric scaling, Oreshkin et al. 2018), initialised at scale_init.
        scale_init: initial value of the learned scale (metric_scale=learned only).

    Example:
        metafsl train algo=protonet algo.distance=cosine algo.temperature=20 algo.metric_scale=learned
    """

    def __init__(self, backbone: nn.Module, distance: Literal["sqeuclidean", "cosine"] = "sqeuclidean",
                 temperature: float = 10.0, metric_scale: Literal["fixed", "learned"] = "fixed",
                 scale_init: float = 1.0):
        super().__init__(backbone)
        self.distance = distance
        self.temperature = temperature
        # only a learned scale is a parameter: checkpoints of fixed-scale runs keep their keys
        self.alpha = nn.Parameter(torch.tensor(float(scale_init))) if metric_scale == "learned" else None

    def scaled(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.alpha is None else self.alpha * logits

    def logits_from_embeddings(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                               n_way: int) -> torch.Tensor:
        protos = prototypes(support, support_y, n_way)
        if self.distance == "cosine":
            return self.scaled(cosine_logits(query, protos, self.temperature))
        return self.scaled(sq_euclidean_logits(query, protos))

    def fit(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Classifier:
        """One task through learn2learn's ``PrototypicalClassifier`` (same logits as above)."""
        distance = "cosine" if self.distance == "cosine" else "euclidean"
        classifier = learn2learn().nn.PrototypicalClassifier(self.embed(support_x), support_y, distance)
        scale = self.temperature if self.distance == "cosine" else 1.0
        return lambda query_x: self.scaled(scale * classifier(self.embed(query_x)))

    def fit_module(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> nn.Module:
        """The backbone and the prototypes (each the only member of its class: the same rule)."""
        protos = prototypes(self.embed(support_x)[None], support_y[None], n_way)[0]
        return SupportRule(self, protos, torch.arange(n_way, device=protos.device), n_way)
