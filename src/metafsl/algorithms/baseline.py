"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot
Classification", ICLR 2019).

Training is plain supervised classification of all training classes (``train_source``
returns a sampler of labelled mini-batches with global labels; one mini-batch per trainer
iteration).  At test time the pre-trained classifier is discarded: for every task a new
head is fitted on the support embeddings with the backbone frozen (SGD lr 0.01, momentum
0.9, dampening 0.9, weight decay 0.001, mini-batches of 4, 100 epochs, as in the paper's
code), then applied to the queries.  The heads of all tasks of a batch are fitted together
as one batched tensor; their gradients are independent.

Baseline: linear head, ``W x + b``.  Baseline++: cosine head,
``scale * <x / |x|, g_k v_k / |v_k|>`` (weight-normalised class vectors with a learned
per-class gain g, as Chen et al.'s ``distLinear``), in pre-training and at test time.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.base import Algorithm, accuracy
from metafsl.data.base import FewShotSplit
from metafsl.data.batches import BatchSampler, LabelledBatch
from metafsl.data.sampler import Pixels, TaskBatch
from metafsl.errors import UserError

Head = Dict[str, torch.Tensor]


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


class Baseline(Algorithm):
    needs_grad_at_test = True
    cosine = False

    def __init__(self, backbone: nn.Module, batch_size: int = 16, finetune_epochs: int = 100,
                 finetune_batch: int = 4, finetune_lr: float = 0.01, finetune_momentum: float = 0.9,
                 finetune_dampening: float = 0.9, finetune_weight_decay: float = 0.001):
        super().__init__(backbone)
        self.batch_size = int(batch_size)
        self.finetune = dict(epochs=int(finetune_epochs), batch=int(finetune_batch), lr=float(finetune_lr),
                             momentum=float(finetune_momentum), dampening=float(finetune_dampening),
                             weight_decay=float(finetune_weight_decay))
        self.scale: Optional[float] = None  # Baseline++: the cosine classifier's scale
        self.classifier: Optional[nn.Module] = None

    # -- pre-training ------------------------------------------------------------------
    def make_classifier(self, n_classes: int) -> nn.Module:
        d = self.backbone.out_features
        if self.cosine:
            return CosineClassifier(d, n_classes, self.scale or chen_scale(n_classes))
        return nn.Linear(d, n_classes)

    def train_source(self, split: FewShotSplit, n_way: int, n_shot: int, n_query: int, device,
                     seed: int, pixels: Pixels, within_group: bool = False):
        if self.classifier is None:
            self.classifier = self.make_classifier(split.n_classes).to(device)
        return BatchSampler(split, self.batch_size, device, seed, pixels)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Recreate the pre-training classifier (sized from the checkpoint) before loading."""
        key = "classifier.v" if self.cosine else "classifier.weight"
        if self.classifier is None and key in state_dict:
            self.classifier = self.make_classifier(state_dict[key].shape[0]).to(state_dict[key].device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def meta_loss(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, LabelledBatch) or self.classifier is None:
            raise UserError(f"{type(self).__name__} trains on labelled mini-batches from its own train_source.")
        logits = self.classifier(self.backbone(batch.x))
        return F.cross_entropy(logits, batch.y), accuracy(logits.detach(), batch.y)

    # -- test time -----------------------------------------------------------------------
    def fit_heads(self, support: torch.Tensor, labels: torch.Tensor, n_way: int) -> Head:
        """New heads (one per task) fitted on frozen support features (B, S, D)."""
        b, s, d = support.shape
        ft = self.finetune
        head = {k: v.requires_grad_() for k, v in
                init_head(b, n_way, d, self.cosine, support.device, support.dtype).items()}
        scale = self.scale or chen_scale(n_way)
        opt = torch.optim.SGD(list(head.values()), lr=ft["lr"], momentum=ft["momentum"],
                              dampening=ft["dampening"], weight_decay=ft["weight_decay"])
        with torch.enable_grad():
            for _ in range(ft["epochs"]):
                perm = torch.randperm(s, device=support.device)
                for start in range(0, s, ft["batch"]):
                    idx = perm[start:start + ft["batch"]]
                    logits = head_logits(head, support[:, idx], scale)
                    # sum over tasks of each task's mean loss: independent per-task gradients
                    loss = F.cross_entropy(logits.flatten(0, 1), labels[:, idx].flatten()) * b
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        return {k: v.detach() for k, v in head.items()}

    def task_logits(self, batch: TaskBatch, train: bool) -> torch.Tensor:
        b, ns = batch.support_x.shape[:2]
        with torch.no_grad():
            z = self.backbone(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
        support, query = z[: b * ns].view(b, ns, -1), z[b * ns:].view(b, batch.query_x.shape[1], -1)
        head = self.fit_heads(support, batch.support_y, batch.n_way)
        return head_logits(head, query, self.scale or chen_scale(batch.n_way))


class BaselinePP(Baseline):
    cosine = True

    def __init__(self, backbone: nn.Module, batch_size: int = 16, finetune_epochs: int = 100,
                 finetune_batch: int = 4, finetune_lr: float = 0.01, finetune_momentum: float = 0.9,
                 finetune_dampening: float = 0.9, finetune_weight_decay: float = 0.001,
                 scale: Optional[float] = None):
        """scale: the cosine classifier's scale; None: Chen et al.'s (2 up to 200 classes, else 10)."""
        super().__init__(backbone, batch_size, finetune_epochs, finetune_batch, finetune_lr,
                         finetune_momentum, finetune_dampening, finetune_weight_decay)
        self.scale = None if scale is None else float(scale)
