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
from metafsl.algorithms.base import PerTaskAlgorithm, accuracy
from metafsl.algorithms.maml import use_batch_statistics
from metafsl.data.sampler import TaskBatch
from metafsl.errors import UserError


class MetaSGD(PerTaskAlgorithm):
    needs_grad_at_test = True

    def __init__(self, backbone: nn.Module, n_way: int, lr_init_min: float = 0.005,
                 lr_init_max: float = 0.1, inner_steps: int = 1, test_inner_steps: int = 1,
                 first_order: bool = False):
        super().__init__(backbone)
        if not 0 <= lr_init_min <= lr_init_max:
            raise UserError(f"Meta-SGD needs 0 <= lr_init_min <= lr_init_max (got {lr_init_min}, {lr_init_max}).")
        use_batch_statistics(backbone)
        self.n_way = n_way
        self.head = nn.Linear(backbone.out_features, n_way)
        self.inner_steps, self.test_inner_steps = int(inner_steps), int(test_inner_steps)
        self.first_order = bool(first_order)
        model = nn.Sequential(self.backbone, self.head)
        lrs = nn.ParameterList([nn.Parameter(torch.empty_like(p).uniform_(lr_init_min, lr_init_max))
                                for p in model.parameters()])
        self.learner = learn2learn().algorithms.MetaSGD(model, lrs=lrs, first_order=self.first_order)

    def check_episode(self, n_way: int, train: bool) -> None:
        if n_way != self.n_way:
            raise UserError(f"This Meta-SGD learner has a {self.n_way}-way output head; it cannot run "
                            f"{n_way}-way episodes (train and test with the same n_way).")

    def adapt(self, support_x, support_y, steps: int, first_order: bool):
        learner = self.learner.clone()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(learner(support_x), support_y)
            learner.adapt(loss, first_order=first_order)
        return learner

    def task_query_logits(self, batch: TaskBatch, i: int) -> torch.Tensor:
        learner = self.adapt(batch.support_x[i], batch.support_y[i], self.inner_steps, self.first_order)
        return learner(batch.query_x[i])

    def evaluate(self, batch: TaskBatch) -> torch.Tensor:
        accs = []
        for i in range(len(batch)):
            with torch.enable_grad():
                learner = self.adapt(batch.support_x[i], batch.support_y[i], self.test_inner_steps, True)
            with torch.no_grad():
                accs.append(accuracy(learner(batch.query_x[i]), batch.query_y[i]))
        return torch.stack(accs)
