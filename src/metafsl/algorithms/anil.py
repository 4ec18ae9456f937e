"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse?
Towards Understanding the Effectiveness of MAML", ICLR 2020).

MAML with the inner loop restricted to the final linear head: the body embeds support and
query images once, the head (learn2learn's ``MAML`` around an ``nn.Linear``) takes the
inner steps on the support embeddings, and the outer loss (query loss of the adapted head)
trains both the body and the head's initialisation.  The body's parameters never change
inside the inner loop.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from metafsl._l2l import learn2learn
from metafsl.algorithms.base import Classifier
from metafsl.algorithms.gradient import GradientLearner


class ANIL(GradientLearner):
    def __init__(self, backbone: nn.Module, n_way: int, inner_lr: float = 0.4, inner_steps: int = 1,
                 test_inner_lr: Optional[float] = None, test_inner_steps: int = 3,
                 first_order: bool = False):
        super().__init__(backbone, n_way)
        self.inner_lr, self.inner_steps = float(inner_lr), int(inner_steps)
        self.test_inner_lr = float(inner_lr if test_inner_lr is None else test_inner_lr)
        self.test_inner_steps = int(test_inner_steps)
        self.first_order = bool(first_order)
        self.head = learn2learn().algorithms.MAML(nn.Linear(backbone.out_features, n_way),
                                                  lr=self.inner_lr, first_order=self.first_order)

    def adapt_head(self, support: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
                   first_order: bool):
        """Clone the head and take ``steps`` gradient steps on the support embeddings."""
        head = self.head.clone(first_order=first_order)
        head.lr = lr
        for _ in range(steps):
            head.adapt(nn.functional.cross_entropy(head(support), labels), first_order=first_order)
        return head

    def task_learner(self, support_x: torch.Tensor, support_y: torch.Tensor, training: bool) -> Classifier:
        """The body embeds, the adapted head classifies; at test time the body runs without a graph."""
        if training:
            head = self.adapt_head(self.backbone(support_x), support_y, self.inner_steps, self.inner_lr,
                                   self.first_order)
            return lambda query_x: head(self.backbone(query_x))
        with torch.no_grad():
            support = self.backbone(support_x)
        head = self.adapt_head(support, support_y, self.test_inner_steps, self.test_inner_lr, first_order=True)
        return lambda query_x: head(self.backbone(query_x))
