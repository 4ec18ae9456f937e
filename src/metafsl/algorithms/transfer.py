"""Transfer baselines: pre-train a classifier of all training classes, fit a new head per task.

Training is plain supervised classification (``train_stream = "batches"``: the engine draws
labelled mini-batches of ``batch_size`` images with global labels, one per trainer iteration;
``prepare_training`` sizes the classifier).  At test time the pre-trained classifier is
discarded: for every task a new head is fitted on the support embeddings with the backbone
frozen (SGD with momentum, dampening and weight decay, small mini-batches, a fixed number of
epochs), then applied to the queries.

A ``TransferBaseline`` names its head family with three hooks: ``make_classifier(n_classes)``
(the pre-training classifier), ``new_head(n_way, dim, device, dtype)`` (a freshly initialised
task head, tensors with a leading task dim of 1) and ``head_logits(head, x, n_way)``.  The heads
of all tasks of a batch are fitted together as one batched tensor; their gradients are
independent and each task draws its initialisation and its mini-batch orders in turn, so
fitting a batch of tasks gives the same heads as fitting them one by one.  Exported
(``fit_module``), the classifier is the backbone and the fitted head.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.base import Algorithm, Classifier, accuracy
from metafsl.algorithms.standalone import FittedHead
from metafsl.data.batches import LabelledBatch
from metafsl.data.sampler import TaskBatch
from metafsl.errors import UserError

Head = Dict[str, torch.Tensor]


class TransferBaseline(Algorithm):
    """Pre-train a classifier of all training classes, fit a new head per task (see the module docstring).

    Arguments:
        batch_size: labelled images per pre-training mini-batch, one mini-batch per trainer iteration
            (trainer.meta_batch_size is not used).
        finetune_epochs: test time, epochs of fitting the new head on the support set (backbone frozen).
        finetune_batch: test time, support images per fine-tuning mini-batch.
        finetune_lr: test time, SGD learning rate of the new head.
        finetune_momentum: test time, SGD momentum.
        finetune_dampening: test time, SGD dampening.
        finetune_weight_decay: test time, SGD weight decay.
    """

    #: fine-tuning a head takes gradient steps at test time
    adapts_with_gradients = True
    #: the state-dict key of the pre-training classifier's first tensor (sized by the class count)
    classifier_key = "classifier.weight"
    #: pre-training draws labelled mini-batches of ``batch_size`` images, not episodes
    train_stream = "batches"

    def __init__(self, backbone: nn.Module, batch_size: int = 16, finetune_epochs: int = 100,
                 finetune_batch: int = 4, finetune_lr: float = 0.01, finetune_momentum: float = 0.9,
                 finetune_dampening: float = 0.9, finetune_weight_decay: float = 0.001):
        super().__init__(backbone)
        self.train_batch_size = int(batch_size)
        self.finetune = dict(epochs=int(finetune_epochs), batch=int(finetune_batch), lr=float(finetune_lr),
                             momentum=float(finetune_momentum), dampening=float(finetune_dampening),
                             weight_decay=float(finetune_weight_decay))
        self.classifier: Optional[nn.Module] = None

    # -- the head family ----------------------------------------------------------------
    def make_classifier(self, n_classes: int) -> nn.Module:
        raise NotImplementedError

    def new_head(self, n_way: int, dim: int, device, dtype) -> Head:
        raise NotImplementedError

    def head_logits(self, head: Head, x: torch.Tensor, n_way: int) -> torch.Tensor:
        """(B, N, D) features -> (B, N, n_way) logits."""
        raise NotImplementedError

    # -- pre-training ------------------------------------------------------------------
    def prepare_training(self, n_classes: int) -> None:
        """The pre-training classifier of the ``n_classes`` training classes, on the backbone's device."""
        if self.classifier is None:
            device = next(self.backbone.parameters(), torch.empty(0)).device
            self.classifier = self.make_classifier(n_classes).to(device)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Recreate the pre-training classifier (sized from the checkpoint) before loading."""
        key = self.classifier_key
        if self.classifier is None and key in state_dict:
            self.classifier = self.make_classifier(state_dict[key].shape[0]).to(state_dict[key].device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def meta_loss(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, LabelledBatch) or self.classifier is None:
            raise UserError(f"{type(self).__name__} trains on labelled mini-batches (train_stream = 'batches'), "
                            "after prepare_training.")
        logits = self.classifier(self.backbone(batch.x))
        return F.cross_entropy(logits, batch.y), accuracy(logits.detach(), batch.y)

    # -- test time -----------------------------------------------------------------------
    def task_draws(self, n_tasks: int, n_support: int, n_way: int, dim: int, device, dtype
                   ) -> Tuple[Head, torch.Tensor]:
        """Initial heads (B, ...) and mini-batch orders (epochs, B, S), drawn task after task."""
        heads, orders = [], []
        for _ in range(n_tasks):
            heads.append(self.new_head(n_way, dim, device, dtype))
            orders.append(torch.stack([torch.randperm(n_support, device=device)
                                       for _ in range(self.finetune["epochs"])]))
        return {k: torch.cat([h[k] for h in heads]) for k in heads[0]}, torch.stack(orders, 1)

    def fit_heads(self, support: torch.Tensor, labels: torch.Tensor, n_way: int) -> Head:
        """New heads (one per task) fitted on frozen support features (B, S, D)."""
        b, s, d = support.shape
        ft = self.finetune
        init, orders = self.task_draws(b, s, n_way, d, support.device, support.dtype)
        head = {k: v.requires_grad_() for k, v in init.items()}
        opt = torch.optim.SGD(list(head.values()), lr=ft["lr"], momentum=ft["momentum"],
                              dampening=ft["dampening"], weight_decay=ft["weight_decay"])
        with torch.enable_grad():
            for order in orders:
                for start in range(0, s, ft["batch"]):
                    idx = order[:, start:start + ft["batch"]]  # (B, m)
                    x = support.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))
                    logits = self.head_logits(head, x, n_way)
                    # sum over tasks of each task's mean loss: independent per-task gradients
                    loss = F.cross_entropy(logits.flatten(0, 1), labels.gather(1, idx).flatten()) * b
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        return {k: v.detach() for k, v in head.items()}

    def fit_head(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Head:
        """The head of one task (a batch of one), fitted on its support set."""
        with torch.no_grad():
            support = self.backbone(support_x)
        return self.fit_heads(support[None], support_y[None], n_way)

    def fit(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Classifier:
        head = self.fit_head(support_x, support_y, n_way)
        return lambda query_x: self.head_logits(head, self.backbone(query_x)[None], n_way)[0]

    def fit_module(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> nn.Module:
        """The backbone and the fitted head (the pre-training classifier is left out)."""
        return FittedHead(self, self.fit_head(support_x, support_y, n_way), n_way)

    def episode_logits(self, batch: TaskBatch) -> torch.Tensor:
        """All tasks' heads fitted at once (the same heads as task by task)."""
        with torch.no_grad():
            support, query = self.embed_episodes(batch)
        return self.logits_from_embeddings(support, batch.support_y, query, batch.n_way)

    def logits_from_embeddings(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                               n_way: int) -> torch.Tensor:
        """(B, Nq, n_way) query logits of heads fitted on the frozen support features (B, Ns, D)
        (the evaluation hands in features averaged over test-time views: ``eval.tta``)."""
        head = self.fit_heads(support, support_y, n_way)
        with torch.no_grad():
            return self.head_logits(head, query, n_way)
