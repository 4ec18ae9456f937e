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
(Nor is it used for the channel groups below: its first call imports ``torch._dynamo``, and with
it sympy and some 900 modules, about 170 MiB of a CPU process's memory, more than the lean query
pass itself keeps.  ``_GroupForward`` is the few lines of recomputation that pass needs.  For the
same reason the vector-Jacobian products go through ``vjp``.)
The model is used functionally (``functional_call``), as the vmap backend does; batch norm uses
each call's batch statistics (no running statistics, see ``gradient.use_batch_statistics``), so
recomputation gives bit-identical steps.  (A Hessian-vector product by forward-over-reverse,
``torch.func.jvp`` of ``torch.func.grad``, kept a little less but ran much slower on the CPU.)

The query pass of the adapted model then dominates (15 queries per class against 1 support
image, and the first conv4 block at full resolution keeps most of it).  A conv4 block
is separable by output channel (``models.conv4.channel_separable``): channel ``c`` of
conv -> batch norm with batch statistics -> ReLU/max-pool depends only on the block's input and
on row ``c`` of its parameters.  ``query_forward`` computes each such block group of channels
by group, each group recomputed in the backward pass (``_GroupForward``; the query's backward is
first order): the forward pass keeps only each block's input, and the backward pass recomputes
one group's activations at a time (``GROUP_BYTES`` of convolution output).  The statistics of
the batch norm are per channel, so each group computes them exactly as the whole block would.
Blocks of other backbones run as they are.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Dict, Iterator, List, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call

from metafsl.models.conv4 import channel_separable


def vjp(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
        cotangents: Sequence[torch.Tensor]) -> tuple:
    """``torch.autograd.grad(outputs, inputs, cotangents)`` as the gradient of the scalar
    ``sum <output, cotangent>``: the same numbers (the product's backward multiplies the cotangent by
    ones), without ``grad``'s check of explicit cotangents, which imports sympy (about 100 MiB) on
    its first call in a process."""
    with torch.enable_grad():
        total = sum((out * c).sum() for out, c in zip(outputs, cotangents))
    return torch.autograd.grad(total, inputs, allow_unused=True)


class SGDStep:
    """The inner step on one support set: ``theta' = theta - lr * grad L(theta)``, for weights
    in ``names`` order, and the vector-Jacobian product of that map."""

    def __init__(self, model: nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor, lr: float):
        self.model, self.names, self.x, self.y, self.lr = model, tuple(names), x, y, lr

    def loss(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        logits = functional_call(self.model, dict(zip(self.names, params)), (self.x,))
        return nn.functional.cross_entropy(logits, self.y)

    def __call__(self, params: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        params = [p.detach().requires_grad_() for p in params]
        with torch.enable_grad():
            grads = torch.autograd.grad(self.loss(params), params)
        return [(p - self.lr * g).detach() for p, g in zip(params, grads)]

    def vjp(self, params: Sequence[torch.Tensor], v: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The vector-Jacobian product of the step at ``params``: ``v - lr * H v`` (H the Hessian of
        the support loss), by differentiating the step's graph, built here and freed on return."""
        params = [p.detach().requires_grad_() for p in params]
        with torch.enable_grad():
            new = [p - self.lr * g for p, g in
                   zip(params, torch.autograd.grad(self.loss(params), params, create_graph=True))]
            return list(vjp(new, params, v))


class _InnerStep(torch.autograd.Function):
    """One inner step, differentiable w.r.t. its input weights, that keeps no activations."""

    @staticmethod
    def forward(ctx, step: SGDStep, *params: torch.Tensor):
        ctx.step = step
        ctx.save_for_backward(*params)
        return tuple(step(params))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_new: torch.Tensor):
        return (None, *ctx.step.vjp([p.detach() for p in ctx.saved_tensors], grad_new))


def adapted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
            lr: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` after ``steps`` inner steps on (x, y), as a function of query images whose output
    is differentiable (second order) w.r.t. the model's parameters."""
    names, params = zip(*model.named_parameters())
    step = SGDStep(model, names, x, y, lr)
    for _ in range(steps):
        params = _InnerStep.apply(step, *params)
    weights = dict(zip(names, params))
    return functools.partial(query_forward, model, weights)


#: the most bytes of convolution output that one channel group of the query pass computes at once
GROUP_BYTES = 4 * 2**20
_BLOCK_PARAMS = ("block.conv.weight", "block.conv.bias", "block.normalize.weight", "block.normalize.bias")


def query_forward(model: nn.Module, weights: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model`` with ``weights`` on the query images ``x``, keeping for the backward pass only the
    input of each channel-separable block (see ``grouped_block``), not its activations."""
    with _grouped_blocks(model):
        return functional_call(model, weights, (x,))


@contextlib.contextmanager
def _grouped_blocks(model: nn.Module) -> Iterator[None]:
    """Within the context, each channel-separable block of ``model`` runs as ``grouped_block``."""
    blocks = [m for m in model.modules() if channel_separable(m)]
    for block in blocks:
        block.forward = functools.partial(grouped_block, block)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


class _ClassForward(nn.Module):
    """A block's own forward pass (its class's), whatever its instance's ``forward`` is now."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.block).forward(self.block, x)


def _group(call: _ClassForward, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
    return functional_call(call, dict(zip(_BLOCK_PARAMS, params)), (x,))


class _GroupForward(torch.autograd.Function):
    """One channel group of a block that keeps only its input and parameters: the backward pass
    computes the group again, with a graph, and differentiates it (first order)."""

    @staticmethod
    def forward(ctx, call: _ClassForward, x: torch.Tensor, *params: torch.Tensor):
        ctx.call = call
        ctx.save_for_backward(x, *params)
        return _group(call, x, *params)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        inputs = [t.detach().requires_grad_(need)
                  for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[1:])]
        with torch.enable_grad():
            out = _group(ctx.call, *inputs)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(vjp([out], wanted, [grad_out]) if wanted else ())
        return (None, *(next(grads) if t.requires_grad else None for t in inputs))


def grouped_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A channel-separable block on ``x``, its output channels computed group by group, each group
    checkpointed: the backward pass recomputes one group's activations at a time (at most about
    ``GROUP_BYTES`` of convolution output) instead of keeping the whole block's."""
    params = [block.conv.weight, block.conv.bias, block.normalize.weight, block.normalize.bias]
    stride = block.conv.stride[0] * block.conv.stride[1]
    per_channel = x.shape[0] * x.shape[-2] * x.shape[-1] * x.element_size() // stride
    size = max(1, GROUP_BYTES // max(1, per_channel))
    call = _ClassForward(block)
    outs = [_GroupForward.apply(call, x, *(p[i:i + size] for p in params))
            for i in range(0, params[0].shape[0], size)]
    return torch.cat(outs, 1)
