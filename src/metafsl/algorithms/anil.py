"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse?
Towards Understanding the Effectiveness of MAML", ICLR 2020).

MAML with the inner loop restricted to the final linear head: the body embeds support and
query images once, the head (learn2learn's ``MAML`` around an ``nn.Linear``) takes the
inner steps on the support embeddings, and the outer loss (query loss of the adapted head)
trains both the body and the head's initialisation.  The body's parameters never change
inside the inner loop.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from metafsl._l2l import learn2learn
from metafsl.algorithms.base import Classifier
from metafsl.algorithms.gradient import GradientLearner


class ANIL(GradientLearner):
    """MAML whose inner loop adapts only the linear head (see the module docstring).

    Example:
        metafsl train algo=anil algo.inner_steps=5 algo.first_order=true
    """

    def __init__(self, backbone: nn.Module, n_way: int, inner_lr: float = 0.4, inner_steps: int = 1,
                 test_inner_lr: Optional[float] = None, test_inner_steps: int = 3,
                 first_order: bool = False):
        super().__init__(backbone, n_way, inner_lr=inner_lr, inner_steps=inner_steps, test_inner_lr=test_inner_lr,
                         test_inner_steps=test_inner_steps, first_order=first_order)
        # learn2learn's MAML wrapper around the linear head: clone() + adapt() in the inner loop
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

    def adapted_head(self, support_x: torch.Tensor, support_y: torch.Tensor, training: bool):
        """The head adapted on the support embeddings; at test time the body runs without a graph."""
        with contextlib.nullcontext() if training else torch.no_grad():
            support = self.backbone(support_x)
        return self.adapt_head(support, support_y, *self.inner_loop_settings(training))

    def adapted_model(self, support_x: torch.Tensor, support_y: torch.Tensor, training: bool) -> Classifier:
        """The body embeds, the adapted head classifies."""
        head = self.adapted_head(support_x, support_y, training)
        return lambda query_x: head(self.backbone(query_x))

    def weight_change(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The head's change only (the body is never adapted)."""
        head = self.adapted_head(support_x, support_y, training=False)
        initial = dict(self.head.module.named_parameters())
        return {k: v - initial[k] for k, v in head.module.named_parameters()}

    def adapted_network(self, support_x: torch.Tensor, support_y: torch.Tensor
                        ) -> Tuple[nn.Module, Dict[str, torch.Tensor]]:
        """The body, unchanged, followed by the adapted head."""
        head = self.adapted_head(support_x, support_y, training=False)
        weights = {f"0.{k}": v for k, v in self.backbone.named_parameters()}
        weights.update({f"1.{k}": v for k, v in head.module.named_parameters()})
        return nn.Sequential(self.backbone, self.head.module), weights
