"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999).

For each task, start from the initialisation theta and take ``inner_steps`` optimiser steps
(Adam with beta1 = 0, as in the paper, or plain SGD) on mini-batches of the support set,
giving task weights phi.  The outer update moves theta towards the task weights:
theta <- theta + epsilon * (mean_tasks(phi) - theta).

The training engine only ever calls ``loss.backward()`` and ``optimizer.step()``, so
``meta_loss`` returns a surrogate whose gradient with respect to theta is exactly
``theta - mean(phi)``: 0.5 * ||theta - stop_grad(mean(phi))||^2.  With ``trainer=reptile``
(SGD, lr = epsilon, linearly annealed) the engine's step *is* the interpolation above; with
another optimiser (e.g. the default Adam) the engine applies that optimiser to the Reptile
gradient, the variant Nichol et al. also describe ("treat theta - phi as a gradient and plug
it into a more sophisticated optimizer like Adam").  The reported loss value is the adapted
weights' query loss (the surrogate only contributes its gradient).

Evaluation: the same inner loop (``test_inner_steps`` of ``test_inner_batch`` images), then
either transductive prediction (all queries in one batch, so batch norm sees their joint
statistics) or Nichol et al.'s non-transductive protocol (each query is classified in a
batch made of the support set plus that query alone).  Batch norm always uses the current
batch's statistics, as in the paper's code.
"""
from __future__ import annotations

from typing import Dict, List, Literal, Tuple

import torch
from torch import nn
from torch.func import functional_call

from metafsl.algorithms.base import Classifier, accuracy
from metafsl.algorithms.gradient import GradientLearner
from metafsl.data.sampler import TaskBatch
from metafsl.errors import UserError

Params = Dict[str, torch.Tensor]


def minibatch_indices(n: int, batch: int, steps: int, device) -> List[torch.Tensor]:
    """``steps`` mini-batches drawn without replacement, reshuffling when the set runs out."""
    batch = min(batch, n)
    perms = [torch.randperm(n, device=device) for _ in range(-(-batch * steps // n))]
    flat = torch.cat(perms)
    return [flat[i * batch:(i + 1) * batch] for i in range(steps)]


def interpolation_surrogate(theta: Params, target: Params) -> torch.Tensor:
    """0.5 * ||theta - target||^2 with target constant: its gradient is theta - target."""
    return sum(0.5 * (theta[k] - target[k].detach()).pow(2).sum() for k in theta)


class Reptile(GradientLearner):
    """Reptile's inner optimiser and interpolation (see the module docstring).

    Arguments:
        inner_lr: learning rate of the inner optimiser (training and test time).
        inner_steps: inner optimiser steps per task in meta-training, each on inner_batch support images.
        inner_batch: support images per inner step during meta-training.
        inner_optimizer: adam, Adam with beta1 = 0 (Nichol et al.); sgd, plain gradient steps.
        test_inner_steps: inner optimiser steps per task at test time.
        test_inner_batch: support images per inner step at test time.
        transductive: true, all queries in one batch (batch-norm statistics shared); false, each query alone
            with the support set (Nichol et al.'s non-transductive protocol).

    Example:
        metafsl train algo=reptile trainer=reptile episode.train.n_shot=10
    """

    backprop_per_task = False  # one surrogate loss for the whole batch

    def __init__(self, backbone: nn.Module, n_way: int, inner_lr: float = 0.001, inner_steps: int = 5,
                 inner_batch: int = 10, inner_optimizer: Literal["adam", "sgd"] = "adam", test_inner_steps: int = 50,
                 test_inner_batch: int = 5, transductive: bool = True):
        super().__init__(backbone, n_way, inner_lr=inner_lr, inner_steps=inner_steps,
                         test_inner_steps=test_inner_steps)
        self.head = nn.Linear(backbone.out_features, n_way)
        self.net = nn.Sequential(self.backbone, self.head)
        self.inner_batch, self.test_inner_batch = int(inner_batch), int(test_inner_batch)
        self.inner_optimizer = inner_optimizer
        self.transductive = bool(transductive)

    def forward_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, params, (x,))

    def task_weights(self, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> Params:
        """Task weights phi after ``steps`` inner optimiser steps from the current theta (no graph)."""
        params = {k: p.detach().clone().requires_grad_() for k, p in self.net.named_parameters()}
        sq = {k: torch.zeros_like(p) for k, p in params.items()}
        beta2, eps = 0.999, 1e-8
        for t, idx in enumerate(minibatch_indices(len(x), batch, steps, x.device), start=1):
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(self.forward_with(params, x[idx]), y[idx])
                grads = torch.autograd.grad(loss, list(params.values()))
            with torch.no_grad():
                for (k, p), g in zip(params.items(), grads):
                    if self.inner_optimizer == "adam":  # Adam with beta1 = 0 (Nichol et al.)
                        sq[k].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                        p.sub_(self.inner_lr * g / ((sq[k] / (1 - beta2 ** t)).sqrt() + eps))
                    else:
                        p.sub_(self.inner_lr * g)
        return {k: p.detach() for k, p in params.items()}

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        theta = dict(self.net.named_parameters())
        phis, losses, accs = [], [], []
        for i in range(len(batch)):
            phi = self.task_weights(batch.support_x[i], batch.support_y[i], self.inner_steps, self.inner_batch)
            phis.append(phi)
            with torch.no_grad():
                logits = self.forward_with(phi, batch.query_x[i])
                losses.append(nn.functional.cross_entropy(logits, batch.query_y[i]))
                accs.append(accuracy(logits, batch.query_y[i]))
        target = {k: torch.stack([phi[k] for phi in phis]).mean(0) for k in theta}
        surrogate = interpolation_surrogate(theta, target)
        query_loss = torch.stack(losses).mean()
        return surrogate - surrogate.detach() + query_loss, torch.stack(accs).mean()

    def query_logits(self, phi: Params, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Query logits with the task weights, transductively or one query at a time."""
        if self.transductive:
            return self.forward_with(phi, query_x)
        return torch.stack([self.forward_with(phi, torch.cat([support_x, q[None]]))[-1] for q in query_x])

    def adapted_model(self, support_x: torch.Tensor, support_y: torch.Tensor, training: bool) -> Classifier:
        steps, batch = (self.inner_steps, self.inner_batch) if training else \
            (self.test_inner_steps, self.test_inner_batch)
        phi = self.task_weights(support_x, support_y, steps, batch)
        return lambda query_x: self.query_logits(phi, support_x, query_x)

    def weight_change(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
        """phi - theta after the test-time inner loop (its mini-batches are drawn at random: the
        change depends on the order of the support set unless test_inner_batch covers it all)."""
        phi = self.task_weights(support_x, support_y, self.test_inner_steps, self.test_inner_batch)
        return {k: phi[k] - p.detach() for k, p in self.net.named_parameters()}

    def adapted_network(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Tuple[nn.Module, Params]:
        """The network with the task weights (transductive prediction only)."""
        if not self.transductive:
            raise UserError("Reptile with algo.transductive=false cannot be exported: it classifies each "
                            "query in one batch with the whole support set, which a file of weights does "
                            "not hold; use metafsl predict.")
        return self.net, self.task_weights(support_x, support_y, self.test_inner_steps, self.test_inner_batch)
