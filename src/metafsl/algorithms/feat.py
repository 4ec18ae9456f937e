"""FEAT: few-shot embedding adaptation with a set-to-set function (Ye, Hu, Zhan & Sha, CVPR 2020).

The class prototypes of a task are adapted together by a set-to-set function, the paper's
transformer variant: one multi-head attention layer over the task's prototypes (PyTorch's
``nn.MultiheadAttention``: projections, scaled dot-product attention with dropout, output
projection), then dropout, a residual connection and layer norm.  Attention without positions
is permutation-equivariant: the adapted prototype of a class does not depend on the order of
the classes.  Queries are scored by ``-|q - p|^2 / temperature`` against the adapted prototypes.

Training adds the paper's contrastive regulariser: the same set function adapts, for each class
of the episode separately, the set of its support and query embeddings; each adapted embedding
is classified against the centres (means) of the adapted sets with temperature
``temperature2``; its cross-entropy is added with weight ``balance``.

Only the prototypes are adapted, from per-image embeddings, so FEAT is a ``MetricLearner`` and
keeps the fast evaluation path.  FEAT starts from a pretrained backbone (the paper pretrains a
classifier on the training classes): see README, "Pretrain, then meta-train".
"""
from __future__ import annotations

from typing import Literal, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.base import accuracy
from metafsl.algorithms.metric import MetricLearner
from metafsl.algorithms.protonet import prototypes, sq_euclidean_logits
from metafsl.data.sampler import TaskBatch


class SetTransformer(nn.Module):
    """One attention layer over a set (B, K, D) -> (B, K, D): ``LayerNorm(x + Dropout(MHA(x, x, x)))``."""

    def __init__(self, dim: int, heads: int = 1, dropout: float = 0.5):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attention(x, x, x, need_weights=False)
        return self.norm(x + self.dropout(out))


def grouped_by_class(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                     query_y: torch.Tensor, n_way: int) -> torch.Tensor:
    """Support and query embeddings of each class together: (B, n_way, (Ns + Nq) / n_way, D)
    (every class with the same number of images, as in training episodes)."""
    x = torch.cat([support, query], 1)
    y = torch.cat([support_y, query_y], 1)
    order = torch.argsort(y, dim=1, stable=True)
    x = x.gather(1, order.unsqueeze(-1).expand_as(x))
    return x.view(x.shape[0], n_way, -1, x.shape[-1])


class FEAT(MetricLearner):
    """Prototypes adapted by a set-to-set function (one attention layer), with the contrastive
    regulariser in training (see the module docstring).

    Arguments:
        set_function: transformer (the paper's FEAT); none: bypassed (ProtoNet with a temperature).
        heads: attention heads (the paper: 1).
        dropout: dropout of the attention and of its output (the paper's code: 0.5).
        temperature: logits are -squared distance / temperature.
        temperature2: temperature of the contrastive regulariser's logits.
        balance: weight of the contrastive regulariser (0: off).

    Example:
        metafsl train algo=feat algo.temperature=32 algo.balance=0.1
    """

    def __init__(self, backbone: nn.Module, set_function: Literal["transformer", "none"] = "transformer",
                 heads: int = 1, dropout: float = 0.5, temperature: float = 64.0, temperature2: float = 16.0,
                 balance: float = 1.0):
        super().__init__(backbone)
        self.set_function = set_function
        self.adapt_set = SetTransformer(backbone.out_features, int(heads), float(dropout))
        self.temperature, self.temperature2 = float(temperature), float(temperature2)
        self.balance = float(balance)

    def adapted(self, protos: torch.Tensor) -> torch.Tensor:
        """The set function over each task's prototypes (B, K, D), or the prototypes when bypassed."""
        return protos if self.set_function == "none" else self.adapt_set(protos)

    def logits_from_embeddings(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                               n_way: int) -> torch.Tensor:
        protos = self.adapted(prototypes(support, support_y, n_way))
        return sq_euclidean_logits(query, protos) / self.temperature

    def contrastive_loss(self, support: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """The regulariser: each class's embeddings adapted as a set, classified against the
        adapted sets' centres (temperature2)."""
        sets = grouped_by_class(support[0], batch.support_y, support[1], batch.query_y, batch.n_way)
        b, k, m, d = sets.shape
        adapted = self.adapted(sets.reshape(b * k, m, d)).view(b, k, m, d)
        centres = adapted.mean(2)
        logits = sq_euclidean_logits(adapted.reshape(b, k * m, d), centres) / self.temperature2
        labels = torch.arange(k, device=logits.device).repeat_interleave(m).expand(b, -1)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        support, query = self.embed_episodes(batch)
        logits = self.logits_from_embeddings(support, batch.support_y, query, batch.n_way)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        if self.balance > 0 and self.set_function != "none":
            loss = loss + self.balance * self.contrastive_loss((support, query), batch)
        return loss, accuracy(logits.detach(), batch.query_y).mean()
