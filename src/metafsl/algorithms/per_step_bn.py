"""MAML++'s per-step batch-norm weights and biases (BNWB; Antoniou, Edwards & Storkey, "How to
train your MAML", ICLR 2019), for ``MAML(per_step_bn=True)``.

Each inner-loop update makes a new network whose features are distributed differently, so each
gets its own batch-norm weight and bias: ``PerStepBatchNorm`` replaces a backbone's affine
batch-norm layer (any ``_BatchNorm``: conv4's, ResNet-12's, ...) by one holding ``sets`` rows of
weights and biases, all initialised from the layer's own, and normalises with row ``step``.
A network that has taken ``k`` inner steps uses row ``min(k, sets - 1)``: its ``step`` is set by
``set_step`` on each task's clone (learn2learn's ``clone_module`` copies a module's ``__dict__``,
so every clone carries its own index).  The rows are meta-parameters only: the inner loop does not
update them (``inner_loop_mask``), as in MAML++, where batch-norm weights and biases stay out of
the inner loop.  Normalisation uses the current batch's statistics (no running averages), as
every MAML-family layer here does.

Written here because learn2learn 0.2.0, the version metafsl runs, has no per-step batch norm, and
the layer is a few lines on ``torch.nn.functional.batch_norm``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn


class PerStepBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A batch-norm layer with ``sets`` rows of weights and biases (sets, C), normalising with the
    current batch's statistics and row ``step`` of its affine parameters."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm, sets: int):
        super().__init__(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=True,
                         track_running_stats=False, device=layer.weight.device, dtype=layer.weight.dtype)
        self.sets, self.step = int(sets), 0
        self.weight = nn.Parameter(layer.weight.detach().repeat(self.sets, 1),
                                   requires_grad=layer.weight.requires_grad)
        self.bias = nn.Parameter(layer.bias.detach().repeat(self.sets, 1), requires_grad=layer.bias.requires_grad)

    def step_affine(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The weight and bias (C,) of the current step."""
        return self.weight[self.step], self.bias[self.step]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, None, None, *self.step_affine(), training=True, momentum=0.0, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, sets={self.sets}, eps={self.eps}"


def layers(module: nn.Module) -> List[PerStepBatchNorm]:
    return [m for m in module.modules() if isinstance(m, PerStepBatchNorm)]


def swap_in(module: nn.Module, sets: int) -> int:
    """Replace (in place) every affine batch-norm layer of ``module`` by a ``PerStepBatchNorm``
    initialised from it; returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, PerStepBatchNorm) \
                and child.affine:
            setattr(module, name, PerStepBatchNorm(child, sets))
            count += 1
        else:
            count += swap_in(child, sets)
    return count


def set_step(module: nn.Module, step: int) -> None:
    """Make ``module``'s per-step layers use the row of a network that has taken ``step`` inner
    steps (the last row beyond the last one)."""
    for m in layers(module):
        m.step = min(int(step), m.sets - 1)


def _row_ids(module: nn.Module) -> set:
    return {id(p) for m in layers(module) for p in (m.weight, m.bias)}


def row_names(module: nn.Module) -> Tuple[str, ...]:
    """The names (as ``module.named_parameters()``) of the per-step rows of weights and biases."""
    fixed = _row_ids(module)
    return tuple(name for name, p in module.named_parameters() if id(p) in fixed)


def inner_loop_mask(module: nn.Module) -> Tuple[bool, ...]:
    """For each of ``module.parameters()``, in order: whether the inner loop updates it (False for
    the per-step batch-norm rows)."""
    fixed = _row_ids(module)
    return tuple(id(p) not in fixed for p in module.parameters())


def inner_gradients(loss: torch.Tensor, params: Sequence[torch.Tensor], mask: Sequence[bool],
                    first_order: bool) -> List[Optional[torch.Tensor]]:
    """The gradients of ``loss`` w.r.t. the parameters the inner loop updates (``mask``), None for
    the others (learn2learn's ``maml_update`` leaves those as they are)."""
    chosen = [p for p, m in zip(params, mask) if m]
    grads = iter(torch.autograd.grad(loss, chosen, create_graph=not first_order))
    return [next(grads) if m else None for m in mask]
