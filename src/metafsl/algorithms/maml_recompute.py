"""Second-order MAML that recomputes each inner step in the backward pass: ``algo.recompute_inner``.

Differentiating through an inner loop of ``S`` steps normally keeps, for every step, the
activations of the support forward pass and the graph of its gradient (to take the second
derivative later): peak memory grows with ``S``.  Here each inner step
``theta' = theta - lr * grad L_support(theta)`` is one ``torch.autograd.Function``: its forward
pass computes the step and keeps only its input weights; its backward pass runs the step again
with a graph (``create_graph=True``) and returns the vector-Jacobian product, then frees that
graph before the previous step is recomputed.  So only one step's graph is alive at a time, plus
the weights after each step (small next to the activations): the same meta-gradient, for one
more support forward/backward per step.

This is gradient checkpointing at the granularity of an inner step.  ``torch.utils.checkpoint``
does not fit: its reentrant form runs the forward pass without autograd (the inner step needs
``autograd.grad``), and its non-reentrant form would keep the inner gradient's graph anyway.
The model is used functionally (``functional_call``), as the vmap backend does; batch norm uses
each call's batch statistics (no running statistics, see ``gradient.use_batch_statistics``), so
recomputation gives bit-identical steps.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call

Step = Callable[[List[torch.Tensor], bool], List[torch.Tensor]]


class _InnerStep(torch.autograd.Function):
    """One inner step, differentiable w.r.t. its input weights, that keeps no activations."""

    @staticmethod
    def forward(ctx, step: Step, *params: torch.Tensor):
        ctx.step = step
        ctx.save_for_backward(*params)
        with torch.enable_grad():
            new = step([p.detach().requires_grad_() for p in params], False)
        return tuple(t.detach() for t in new)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_new: torch.Tensor):
        params = [p.detach().requires_grad_() for p in ctx.saved_tensors]
        with torch.enable_grad():
            new = ctx.step(params, True)
            grads = torch.autograd.grad(new, params, grad_new, allow_unused=True)
        return (None, *grads)


def sgd_step(model: nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor, lr: float) -> Step:
    """The inner step on one support set: weights (in ``names`` order) -> updated weights."""
    def step(params: List[torch.Tensor], create_graph: bool) -> List[torch.Tensor]:
        loss = nn.functional.cross_entropy(functional_call(model, dict(zip(names, params)), (x,)), y)
        grads = torch.autograd.grad(loss, params, create_graph=create_graph)
        return [p - lr * g for p, g in zip(params, grads)]
    return step


def adapted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
            lr: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` after ``steps`` inner steps on (x, y), as a function of query images whose output
    is differentiable (second order) w.r.t. the model's parameters."""
    names, params = zip(*model.named_parameters())
    step = sgd_step(model, names, x, y, lr)
    for _ in range(steps):
        params = _InnerStep.apply(step, *params)
    weights = dict(zip(names, params))
    return lambda query_x: functional_call(model, weights, (query_x,))
