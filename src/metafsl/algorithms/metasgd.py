"""Meta-SGD (Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
arXiv:1707.09835, 2017), via learn2learn's ``MetaSGD``.

Like MAML, but every parameter has its own learned inner learning rate (a tensor of the
parameter's shape): theta' = theta - alpha * grad (element-wise).  The rates are
meta-learned with the initialisation; Li et al. initialise them uniformly in [0.005, 0.1] and
take a single inner step at training and test time.
"""
from __future__ import annotations

import torch
from torch import nn

from metafsl._l2l import learn2learn
from metafsl.algorithms.base import Classifier
from metafsl.algorithms.gradient import GradientLearner
from metafsl.errors import UserError


class MetaSGD(GradientLearner):
    """MAML with a learned inner learning rate per parameter element (see the module docstring).

    Arguments:
        lr_init_min: lower bound of the uniform initialisation of the learned inner rates.
        lr_init_max: upper bound of the uniform initialisation of the learned inner rates.

    Example:
        metafsl train algo=metasgd algo.lr_init_max=0.05
    """

    renamed_state_keys = {"learner.": "l2l_model."}  # how checkpoints of 0.1.0 name it

    def __init__(self, backbone: nn.Module, n_way: int, lr_init_min: float = 0.005,
                 lr_init_max: float = 0.1, inner_steps: int = 1, test_inner_steps: int = 1,
                 first_order: bool = False):
        if not 0 <= lr_init_min <= lr_init_max:
            raise UserError(f"Meta-SGD needs 0 <= lr_init_min <= lr_init_max (got {lr_init_min}, {lr_init_max}).")
        super().__init__(backbone, n_way, inner_steps=inner_steps, test_inner_steps=test_inner_steps,
                         first_order=first_order)
        self.head = nn.Linear(backbone.out_features, n_way)
        model = nn.Sequential(self.backbone, self.head)
        lrs = nn.ParameterList([nn.Parameter(torch.empty_like(p).uniform_(lr_init_min, lr_init_max))
                                for p in model.parameters()])
        # learn2learn's wrapper: shares backbone + head's parameters and holds the learned rates
        self.l2l_model = learn2learn().algorithms.MetaSGD(model, lrs=lrs, first_order=self.first_order)

    def inner_loop(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int, first_order: bool):
        """A clone of the model after ``steps`` Meta-SGD steps on the support loss."""
        model = self.l2l_model.clone()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(support_x), support_y)
            model.adapt(loss, first_order=first_order)
        return model

    def adapted_model(self, support_x: torch.Tensor, support_y: torch.Tensor, training: bool) -> Classifier:
        steps, _, first_order = self.inner_loop_settings(training)  # the rates are learned, per parameter
        return self.inner_loop(support_x, support_y, steps, first_order)
