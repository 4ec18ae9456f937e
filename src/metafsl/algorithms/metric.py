"""Metric learners: an embedding of each image and a rule that turns embeddings into logits.

A ``MetricLearner`` declares ``embed(x)`` (the backbone: one embedding per image) and
``logits_from_embeddings(support, support_y, query, n_way)`` on batches of tasks (support
(B, Ns, D), labels (B, Ns), query (B, Nq, D) -> logits (B, Nq, n_way)); everything else
derives from these two: training logits (one backbone pass for a whole meta-batch), the
classifier of one task, and evaluation.  Declaring them is also what lets
``metafsl.engine.fast_eval`` embed each distinct test image once instead of once per episode,
so a metric learner must compute its logits from per-image embeddings only (the backbone
is what ``fast_eval`` traces: change the embedding through the backbone, not ``embed``).

ProtoNet, Matching Networks, Relation Network, Siamese networks and MetaOptNet are metric
learners.  A metric learner's task embedding (``metafsl tasks``) is the mean of the class
prototypes of its embeddings.  Exported (``fit_module``), a metric learner's classifier is its backbone and its rule
with the support embeddings fixed (``algorithms/standalone.py``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from metafsl.algorithms.base import Algorithm, Classifier, accuracy, class_count, mean_prototype
from metafsl.algorithms.standalone import SupportRule
from metafsl.data.sampler import TaskBatch

#: the shipped metric learners, named in the sentences that refuse a test-time option to others
METRIC_LEARNERS = "ProtoNet, Matching Networks, Relation Network, Siamese, MetaOptNet, FEAT, SimpleShot"


class MetricLearner(Algorithm):
    task_embedding_kind = "the mean of the class prototypes of the support embeddings"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image embeddings (N, D) of images (N, C, H, W)."""
        return self.backbone(x)

    def logits_from_embeddings(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                               n_way: int) -> torch.Tensor:
        """Query logits (B, Nq, n_way) of a batch of tasks from their embeddings."""
        raise NotImplementedError

    def batch_logits(self, batch: TaskBatch) -> torch.Tensor:
        """Differentiable query logits (B, Nq, n_way): one backbone pass over the whole batch."""
        support, query = self.embed_episodes(batch)
        return self.logits_from_embeddings(support, batch.support_y, query, batch.n_way)

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.batch_logits(batch)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, accuracy(logits.detach(), batch.query_y).mean()

    def fit(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Classifier:
        support, labels = self.embed(support_x)[None], support_y[None]
        return lambda query_x: self.logits_from_embeddings(support, labels, self.embed(query_x)[None], n_way)[0]

    def task_embedding(self, support_x: torch.Tensor, support_y: torch.Tensor,
                       n_way: Optional[int] = None) -> torch.Tensor:
        """The mean of the class prototypes (class means) of the support embeddings, (D,)."""
        n_way = class_count(support_y) if n_way is None else n_way
        self.check_episode(n_way, train=False)
        with torch.no_grad():
            return mean_prototype(self.embed(support_x).flatten(1), support_y, n_way).detach()

    def fit_module(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> nn.Module:
        """The backbone and this method's rule, with the support embeddings fixed."""
        return SupportRule(self, self.embed(support_x), support_y, n_way)

    def episode_logits(self, batch: TaskBatch) -> torch.Tensor:
        """The tasks of ``batch`` at once (in eval mode each image's embedding is its own, so
        this equals adapting task by task)."""
        self.check_episode(batch.n_way, train=False)
        with torch.no_grad():
            return self.batch_logits(batch)
