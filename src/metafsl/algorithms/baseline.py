"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot
Classification", ICLR 2019).

Training is plain supervised classification of all training classes (labelled mini-batches
with global labels, one per trainer iteration: ``train_stream = "batches"``).  At test time
the pre-trained classifier is discarded: for every task a new head is fitted on the support
embeddings with the backbone frozen (SGD lr 0.01, momentum 0.9, dampening 0.9, weight decay
0.001, mini-batches of 4, 100 epochs, as in the paper's code), then applied to the queries
(``metafsl.algorithms.transfer``).

Baseline: linear head, ``W x + b``.  Baseline++: cosine head,
``scale * <x / |x|, g_k v_k / |v_k|>`` (weight-normalised class vectors with a learned
per-class gain g, as Chen et al.'s ``distLinear``), in pre-training and at test time.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.transfer import Head, TransferBaseline


def chen_scale(n_classes: int) -> float:
    """Chen et al.'s fixed cosine scale: 2 for up to 200 classes, 10 beyond."""
    return 2.0 if n_classes <= 200 else 10.0


def init_head(batch: int, n_classes: int, dim: int, cosine: bool, device, dtype) -> Head:
    """Per-task head parameters (B, K, D) [+ bias or gain (B, K)], nn.Linear's initialisation."""
    bound = 1 / math.sqrt(dim)
    w = torch.empty(batch, n_classes, dim, device=device, dtype=dtype).uniform_(-bound, bound)
    if cosine:
        return {"v": w, "g": w.norm(dim=-1)}
    return {"w": w, "b": torch.empty(batch, n_classes, device=device, dtype=dtype).uniform_(-bound, bound)}


def head_logits(head: Head, x: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, N, D) features -> (B, N, K) logits."""
    if "v" in head:
        w = head["g"].unsqueeze(-1) * F.normalize(head["v"], dim=-1)
        return scale * F.normalize(x, dim=-1) @ w.transpose(1, 2)
    return x @ head["w"].transpose(1, 2) + head["b"].unsqueeze(1)


class CosineClassifier(nn.Module):
    """Baseline++'s pre-training classifier (one head over all training classes)."""

    def __init__(self, dim: int, n_classes: int, scale: float):
        super().__init__()
        head = init_head(1, n_classes, dim, True, "cpu", torch.float32)
        self.v = nn.Parameter(head["v"][0])
        self.g = nn.Parameter(head["g"][0])
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return head_logits({"v": self.v[None], "g": self.g[None]}, x[None], self.scale)[0]


class Baseline(TransferBaseline):
    """Linear heads, ``W x + b``.

    Example:
        metafsl train algo=baseline algo.batch_size=64 algo.finetune_epochs=50
    """

    def make_classifier(self, n_classes: int) -> nn.Module:
        return nn.Linear(self.backbone.out_features, n_classes)

    def new_head(self, n_way: int, dim: int, device, dtype) -> Head:
        return init_head(1, n_way, dim, False, device, dtype)

    def head_logits(self, head: Head, x: torch.Tensor, n_way: int) -> torch.Tensor:
        return head_logits(head, x, 1.0)


class BaselinePP(TransferBaseline):
    """Cosine heads with Chen et al.'s scale (or ``scale``), in pre-training and at test time.

    Arguments:
        scale: cosine-classifier scale; null: 2 for up to 200 classes, else 10 (Chen et al.'s code).

    Example:
        metafsl train algo=baselinepp algo.scale=10
    """

    classifier_key = "classifier.v"

    def __init__(self, backbone: nn.Module, batch_size: int = 16, finetune_epochs: int = 100,
                 finetune_batch: int = 4, finetune_lr: float = 0.01, finetune_momentum: float = 0.9,
                 finetune_dampening: float = 0.9, finetune_weight_decay: float = 0.001,
                 scale: Optional[float] = None):
        super().__init__(backbone, batch_size, finetune_epochs, finetune_batch, finetune_lr, finetune_momentum,
                         finetune_dampening, finetune_weight_decay)
        self.scale = None if scale is None else float(scale)

    def make_classifier(self, n_classes: int) -> nn.Module:
        return CosineClassifier(self.backbone.out_features, n_classes, self.scale or chen_scale(n_classes))

    def new_head(self, n_way: int, dim: int, device, dtype) -> Head:
        return init_head(1, n_way, dim, True, device, dtype)

    def head_logits(self, head: Head, x: torch.Tensor, n_way: int) -> torch.Tensor:
        return head_logits(head, x, self.scale or chen_scale(n_way))
