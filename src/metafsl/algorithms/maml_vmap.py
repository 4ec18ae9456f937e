"""Batched MAML (Finn, Abbeel & Levine, ICML 2017) with ``torch.func``: ``algo.backend=vmap``.

The learn2learn backend adapts one task at a time (``clone`` + ``adapt`` per task).  Here the
model is used functionally (``functional_call``) and the whole inner loop of one task -- support
loss, ``grad``, parameter update, repeated ``steps`` times -- is written as a pure function of
the meta-parameters, which ``vmap`` then maps over the tasks of a meta-batch: every layer runs
once per meta-batch on all tasks at once (per-task weights become a grouped convolution).

The meta-gradient is the same as the per-task loop's: ``torch.func.grad`` builds a differentiable
inner gradient, so ``loss.backward()`` on the mean query loss differentiates through the inner
loop (second order).  With ``first_order=True`` the inner gradients are detached (FOMAML).
Batch norm normalises with each task's own batch statistics, as in Finn et al. (the backbone's
batch-norm layers carry no running statistics, see ``gradient.use_batch_statistics``): inside
``vmap`` each task is its own batch.  While the batched functions run, batch-norm layers compute
their statistics with plain tensor ops (``_explicit_batch_norm``): torch 2.x's batching rule for
the fused batch-norm kernel gives wrong second derivatives under ``vmap`` + ``grad`` (first
derivatives and outputs agree), which the reference comparison in tests/test_maml_vmap.py caught.
"""
from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

Params = dict[str, torch.Tensor]


def _batch_norm_with_batch_stats(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Training-mode batch norm of ``x`` (N, C, ...) from elementary ops (exact higher derivatives)."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y


@contextlib.contextmanager
def _explicit_batch_norm(model: nn.Module) -> Iterator[None]:
    """Temporarily route every batch-norm layer of ``model`` through ``_batch_norm_with_batch_stats``."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        if m.running_mean is not None:
            raise ValueError("batched MAML expects batch norm without running statistics "
                             "(see metafsl.algorithms.gradient.use_batch_statistics)")
        m.forward = types.MethodType(_batch_norm_with_batch_stats, m)
    try:
        yield
    finally:
        for m in layers:
            del m.forward


def _support_loss(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)


def adapt(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
          first_order: bool) -> Params:
    """``steps`` SGD steps of size ``lr`` on the loss of one task's support set (x, y).

    Pure in ``params``: the result is differentiable w.r.t. them (through the inner gradients
    unless ``first_order``).  Called per task under ``vmap``.
    """
    loss_grad = grad(lambda p: _support_loss(model, p, x, y))
    for _ in range(steps):
        g = loss_grad(params)
        params = {k: p - lr * (g[k].detach() if first_order else g[k]) for k, p in params.items()}
    return params


def batched_query_logits(model: nn.Module, params: Params, support_x: torch.Tensor,
                         support_y: torch.Tensor, query_x: torch.Tensor, steps: int, lr: float,
                         first_order: bool) -> torch.Tensor:
    """Adapt to each task's support set and return its query logits, all tasks at once.

    support_x (B, Ns, C, H, W), support_y (B, Ns), query_x (B, Nq, C, H, W) -> (B, Nq, n_way).
    """

    def one_task(sx, sy, qx):
        adapted = adapt(model, params, sx, sy, steps, lr, first_order)
        return functional_call(model, adapted, (qx,))

    with _explicit_batch_norm(model):
        return vmap(one_task)(support_x, support_y, query_x)


def meta_loss(model: nn.Module, batch, steps: int, lr: float, first_order: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean query cross-entropy over the tasks of ``batch`` and the query logits (B, Nq, n_way)."""
    params = dict(model.named_parameters())
    logits = batched_query_logits(model, params, batch.support_x, batch.support_y, batch.query_x,
                                  steps, lr, first_order)
    losses = nn.functional.cross_entropy(logits.transpose(1, 2), batch.query_y, reduction="none")
    return losses.mean(1).mean(), logits


def query_logits_no_grad(model: nn.Module, batch, steps: int, lr: float) -> torch.Tensor:
    """Test-time adaptation (first order: nothing is differentiated through) without a graph."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    with torch.no_grad():  # torch.func.grad still differentiates inside the inner loop
        return batched_query_logits(model, params, batch.support_x, batch.support_y, batch.query_x,
                                    steps, lr, first_order=True)
