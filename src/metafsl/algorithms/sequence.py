"""Sequence learners: a recurrent network of the learner's own reads the support set and adapts.

MANN writes the labelled support examples into an external memory; the meta-learner LSTM
turns the support loss and gradient into updates of a classifier's weights.  Neither uses an
optimiser at test time: adapting is running the learned recurrence.  Both have a fixed number
of outputs, ``n_way``.

A ``SequenceLearner`` implements ``read(support_x, support_y, n_way, training)``: the classifier
produced by reading one task's support set (``training=True`` inside ``meta_loss``, where the
result stays differentiable).  ``fit`` (so ``adapt``, evaluation and ``metafsl predict``) is
``read`` at test time, and the default ``meta_loss`` is the mean query cross-entropy of the
tasks read one by one.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from metafsl.algorithms.base import Algorithm, Classifier, accuracy
from metafsl.data.sampler import TaskBatch


class SequenceLearner(Algorithm):
    def __init__(self, backbone: nn.Module, n_way: int):
        super().__init__(backbone)
        self.n_way = int(n_way)

    def read(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int, training: bool) -> Classifier:
        """The classifier of one task after reading its support set."""
        raise NotImplementedError

    def fit(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Classifier:
        return self.read(support_x, support_y, n_way, training=False)

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        losses, accs = [], []
        for i in range(len(batch)):
            logits = self.read(batch.support_x[i], batch.support_y[i], batch.n_way, training=True)(batch.query_x[i])
            losses.append(nn.functional.cross_entropy(logits, batch.query_y[i]))
            accs.append(accuracy(logits.detach(), batch.query_y[i]))
        return torch.stack(losses).mean(), torch.stack(accs).mean()
