"""One task's classifier as a standalone ``nn.Module``: the optional part of the learner contract
that ``metafsl export`` uses.

``Algorithm.adapt_module(support_x, support_y)`` is ``adapt`` returning a module instead of a
closure: preprocessed images (N, C, H, W) -> logits (N, n_way), holding copies of everything it
uses (no reference to the learner, no gradients, eval mode), written so that ``torch.jit.trace``
and the ONNX exporter can record it.  Its logits equal those of ``adapt``'s classifier.  A method
provides it through its family's hook ``fit_module(support_x, support_y, n_way)``:

- metric learners: the backbone and the method's rule with the support embeddings fixed
  (``SupportRule``; ProtoNet keeps only its prototypes, MetaOptNet its solved linear head, since
  a 200-step SVM solve is no graph to export);
- gradient learners (MAML, FOMAML, MAML++, Meta-SGD, ANIL, Reptile) and the meta-learner LSTM,
  whose reading of the support set yields new weights: the network with the weights adapted to
  the support set (``network_with``);
- transfer baselines: the backbone and the fitted head (``FittedHead``);
- MANN refuses (``export_refusal``): its classifier is a controller state, not a network.

Test-time augmentation (``eval.tta``) is kept by building the module while the learner's backbone
is ``ViewAveraged`` (``backbone_over_views``): the support embeddings, and those of every image
the module classifies, are then averaged over the same fixed views as ``metafsl test`` and
``metafsl predict`` average them.

Batch norm that normalises with the current batch's statistics (the MAML family's, as in Finn et
al.'s code) is replaced by ``BatchStatisticsNorm``, the same computation in plain operations,
which the ONNX exporter records (it refuses ``batch_norm`` without running statistics).  Such a
classifier stays transductive: images classified together share their statistics.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Dict, Iterator, Optional

import torch
from torch import nn

from metafsl.algorithms.per_step_bn import PerStepBatchNorm
from metafsl.data.augment import tta_views


class BatchStatisticsNorm(nn.Module):
    """Batch norm with the current batch's statistics (biased variance), as ``F.batch_norm`` in
    training mode without running averages."""

    def __init__(self, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float):
        super().__init__()
        self.register_buffer("weight", None if weight is None else weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - x.mean(dims, keepdim=True)
        out = centred / torch.sqrt(centred.pow(2).mean(dims, keepdim=True) + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out


def explicit_batch_statistics(module: nn.Module) -> nn.Module:
    """Replace (in place) every batch-norm layer without running statistics by a
    ``BatchStatisticsNorm``; layers with running statistics (eval mode) are kept."""
    for name, child in list(module.named_children()):
        if isinstance(child, PerStepBatchNorm):  # MAML++'s per-step BN: the weights of its current step
            setattr(module, name, BatchStatisticsNorm(*child.step_affine(), child.eps))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and child.running_mean is None:
            setattr(module, name, BatchStatisticsNorm(child.weight, child.bias, child.eps))
        else:
            explicit_batch_statistics(child)
    return module


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode, without gradients, batch statistics made explicit."""
    module = explicit_batch_statistics(module.eval())
    return module.requires_grad_(False)


def network_with(net: nn.Module, weights: Dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``net`` whose parameters are ``weights`` (name -> tensor, every parameter)."""
    out = copy.deepcopy(net)
    params = dict(out.named_parameters())
    missing = sorted(set(params) - set(weights))
    if missing:
        raise KeyError(f"adapted weights lack {missing[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].detach())
    return out


def detached_copy(module: nn.Module, **replace) -> nn.Module:
    """A deep copy of ``module`` with the given attributes replaced first (e.g. ``classifier=None``:
    a part the standalone classifier does not use is not copied)."""
    saved = {k: getattr(module, k) for k in replace}
    try:
        for k, v in replace.items():
            setattr(module, k, v)
        return copy.deepcopy(module)
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


class ViewAveraged(nn.Module):
    """A backbone whose output for each image is the mean of its outputs for the first ``views``
    fixed views of it (``metafsl.data.augment.tta_views``: one-pixel shifts, then mirror images)."""

    def __init__(self, backbone: nn.Module, views: int):
        super().__init__()
        self.backbone = backbone
        self.views = int(views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.backbone(v.contiguous()) for v in tta_views(x, self.views)]).mean(0)


@contextlib.contextmanager
def backbone_over_views(learner: nn.Module, views: int) -> Iterator[nn.Module]:
    """``learner`` embedding every image over ``views`` fixed views while inside (1: unchanged);
    a module built inside (``adapt_module``) keeps the averaging backbone."""
    if views <= 1:
        yield learner
        return
    backbone = learner.backbone
    learner.backbone = ViewAveraged(backbone, views)
    try:
        yield learner
    finally:
        learner.backbone = backbone


class SupportRule(nn.Module):
    """A metric learner's rule with the support embeddings and labels fixed (buffers): query
    images are embedded by the learner's backbone and scored by ``logits_from_embeddings``."""

    def __init__(self, learner: nn.Module, support: torch.Tensor, labels: torch.Tensor, n_way: int):
        super().__init__()
        self.learner = detached_copy(learner)
        self.register_buffer("support", support.detach().clone())
        self.register_buffer("labels", labels.detach().clone())
        self.n_way = int(n_way)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.learner.embed(x)[None]
        return self.learner.logits_from_embeddings(self.support[None], self.labels[None], query, self.n_way)[0]


class FittedHead(nn.Module):
    """A transfer baseline's backbone and the head fitted on one support set (buffers)."""

    def __init__(self, learner: nn.Module, head: Dict[str, torch.Tensor], n_way: int):
        super().__init__()
        self.learner = detached_copy(learner, classifier=None)  # not the pre-training classifier
        self.keys = sorted(head)
        for k in self.keys:
            self.register_buffer(f"head_{k}", head[k].detach().clone())
        self.n_way = int(n_way)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = {k: getattr(self, f"head_{k}") for k in self.keys}
        return self.learner.head_logits(head, self.learner.backbone(x)[None], self.n_way)[0]


def linear_on(backbone: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> nn.Module:
    """A copy of ``backbone`` followed by the linear map ``weight`` (K, D) [+ ``bias``]."""
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight.detach())
        if bias is not None:
            head.bias.copy_(bias.detach())
    return nn.Sequential(copy.deepcopy(backbone), head.to(weight.device))
