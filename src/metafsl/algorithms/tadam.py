"""TADAM: task dependent adaptive metric (Oreshkin, Rodriguez & Lacoste, NeurIPS 2018).

A ProtoNet whose embedding depends on the task:

- task representation: the mean of the class prototypes computed by the unconditioned backbone;
- a task-embedding network (TEN, ``film.TaskEmbeddingNetwork``) maps it to FiLM scales and
  shifts for every batch-norm layer of the backbone (``film``: forward hooks, any backbone);
  they are post-multiplied by learned scalars initialised at 0 and L2-penalised, so the
  conditioned backbone is the unconditioned one at initialisation;
- learned metric scaling: logits ``alpha * -d(query, prototype)`` with ``alpha`` learned;
- auxiliary co-training: a many-way head over all training classes, with a weight annealed over
  training (``aux_weight * aux_decay ** (step // aux_decay_every)``, the paper's
  ``0.9 ** floor(20 t / T)`` with ``aux_decay_every = T / 20``).  The paper draws separate
  batches of the training classes; here the head classifies the episode's own (conditioned)
  support and query images by their class in the training split (``TaskBatch.classes``), which
  keeps a single training stream.

Because each image's embedding depends on its task, the fast evaluation of metric learners
(one embedding per distinct image, ``engine/fast_eval.py``) does not apply: TADAM is not a
``MetricLearner`` and evaluates episode by episode (batched).  Exported (``fit_module``), its
classifier is the backbone conditioned by the task's FiLM parameters, with the prototypes fixed.
"""
from __future__ import annotations

from typing import List, Literal, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.base import Algorithm, Classifier, accuracy, class_count
from metafsl.algorithms.film import Film, FilmedBackbone, TaskEmbeddingNetwork, attach, conditioned
from metafsl.algorithms.protonet import cosine_logits, prototypes, sq_euclidean_logits
from metafsl.data.sampler import TaskBatch


class ScaledPrototypes(nn.Module):
    """A (conditioned) backbone and fixed prototypes: images -> ``alpha * -d`` logits."""

    def __init__(self, embed: nn.Module, protos: torch.Tensor, alpha: torch.Tensor, distance: str):
        super().__init__()
        self.embed = embed
        self.register_buffer("protos", protos.detach().clone())
        self.register_buffer("alpha", alpha.detach().clone())
        self.distance = distance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_logits(self.embed(x)[None], self.protos[None], self.alpha, self.distance)[0]


def scaled_logits(query: torch.Tensor, protos: torch.Tensor, alpha: torch.Tensor, distance: str) -> torch.Tensor:
    """``alpha`` times ProtoNet's logits: (B, Q, D), (B, K, D) -> (B, Q, K)."""
    if distance == "cosine":
        return alpha * cosine_logits(query, protos, 1.0)
    return alpha * sq_euclidean_logits(query, protos)


class TADAM(Algorithm):
    """ProtoNet with a task-conditioned backbone (FiLM from a task-embedding network), learned metric
    scaling and auxiliary co-training on the training classes (see the module docstring).

    Arguments:
        distance: sqeuclidean (the paper's Euclidean metric, squared) or cosine.
        scale_init: initial value of the learned metric scale alpha.
        film_penalty: weight of the L2 penalty on the FiLM post-multipliers.
        aux_weight: initial weight of the auxiliary many-way loss; 0 turns co-training off.
        aux_decay: factor by which the auxiliary weight decays every aux_decay_every iterations.
        aux_decay_every: training iterations per decay step (the paper: a twentieth of training).

    Example:
        metafsl train algo=tadam backbone=resnet12 algo.aux_decay_every=1500
    """

    #: the FiLM parameters and the many-way head are created with the backbone's shape
    classifier_key = "classifier.weight"

    def __init__(self, backbone: nn.Module, distance: Literal["sqeuclidean", "cosine"] = "sqeuclidean",
                 scale_init: float = 1.0, film_penalty: float = 0.01, aux_weight: float = 0.9,
                 aux_decay: float = 0.9, aux_decay_every: int = 1000):
        super().__init__(backbone)
        self.distance = distance
        self.ten = TaskEmbeddingNetwork(backbone.out_features, attach(backbone))
        self.alpha = nn.Parameter(torch.tensor(float(scale_init)))
        self.film_penalty = float(film_penalty)
        self.aux = dict(weight=float(aux_weight), decay=float(aux_decay), every=max(1, int(aux_decay_every)))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.classifier: Optional[nn.Module] = None

    # -- the task and its conditioning ----------------------------------------------------
    def task_representation(self, support: torch.Tensor, support_y: torch.Tensor, n_way: int) -> torch.Tensor:
        """Mean of the class prototypes: support embeddings (B, Ns, D), labels (B, Ns) -> (B, D)."""
        return prototypes(support, support_y, n_way).mean(1)

    def film(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> List[Film]:
        """Per task the FiLM parameters (B, C) of each layer: support images (B, Ns, C, H, W)."""
        support = self.backbone(support_x.flatten(0, 1)).view(*support_x.shape[:2], -1)
        return self.ten(self.task_representation(support, support_y, n_way))

    def embed_conditioned(self, x: torch.Tensor, params: List[Film]) -> torch.Tensor:
        """Embeddings (B, N, D) of images (B, N, C, H, W), each task's by its own FiLM parameters."""
        b, n = x.shape[:2]
        per_image = [(g.repeat_interleave(n, 0), h.repeat_interleave(n, 0)) for g, h in params]
        with conditioned(self.backbone, per_image):
            return self.backbone(x.flatten(0, 1)).view(b, n, -1)

    task_embedding_kind = "TADAM's task representation (the mean class prototype its task network reads)"

    def task_embedding(self, support_x: torch.Tensor, support_y: torch.Tensor,
                       n_way: Optional[int] = None) -> torch.Tensor:
        """TADAM's task representation (D,) of one labelled support set (what its TEN reads)."""
        n_way = class_count(support_y) if n_way is None else n_way
        self.check_episode(n_way, train=False)
        with torch.no_grad():
            support = self.backbone(support_x)[None]
            return self.task_representation(support, support_y[None], n_way)[0].detach()

    # -- training ---------------------------------------------------------------------------
    def prepare_training(self, n_classes: int) -> None:
        """The many-way head over the ``n_classes`` training classes (when co-training is on)."""
        if self.classifier is None and self.aux["weight"] > 0:
            self.classifier = nn.Linear(self.backbone.out_features, n_classes).to(self.alpha.device)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Recreate the many-way head (sized from the checkpoint) before loading."""
        w = state_dict.get(self.classifier_key)
        if self.classifier is None and w is not None:
            self.classifier = nn.Linear(w.shape[1], w.shape[0]).to(w.device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def aux_weight(self) -> float:
        """The auxiliary loss's weight at the current training step."""
        return self.aux["weight"] * self.aux["decay"] ** (int(self.step) // self.aux["every"])

    def batch_logits(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiable query logits (B, Nq, n_way) and the conditioned support and query
        embeddings (B, Ns, D), (B, Nq, D)."""
        params = self.film(batch.support_x, batch.support_y, batch.n_way)
        ns = batch.support_x.shape[1]
        z = self.embed_conditioned(torch.cat([batch.support_x, batch.query_x], 1), params)
        support, query = z[:, :ns], z[:, ns:]
        protos = prototypes(support, batch.support_y, batch.n_way)
        return scaled_logits(query, protos, self.alpha, self.distance), support, query

    def aux_loss(self, batch: TaskBatch, support: torch.Tensor, query: torch.Tensor) -> Optional[torch.Tensor]:
        """Cross-entropy of the many-way head on the episode's images labelled by their training
        class; None when co-training is off or the batch does not say its classes."""
        if self.classifier is None or batch.classes is None or self.aux_weight() == 0:
            return None
        classes = batch.classes.to(batch.support_y.device)
        labels = torch.cat([classes.gather(1, batch.support_y), classes.gather(1, batch.query_y)], 1)
        logits = self.classifier(torch.cat([support, query], 1))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, support, query = self.batch_logits(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        loss = loss + self.film_penalty * self.ten.penalty()
        aux = self.aux_loss(batch, support, query)
        if aux is not None:
            loss = loss + self.aux_weight() * aux
        if self.training and torch.is_grad_enabled():
            self.step += 1
        return loss, accuracy(logits.detach(), batch.query_y).mean()

    # -- test time ----------------------------------------------------------------------------
    def fit_parts(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int
                  ) -> Tuple[List[Film], torch.Tensor]:
        """One task's FiLM parameters (each (1, C)) and prototypes (n_way, D)."""
        params = self.film(support_x[None], support_y[None], n_way)
        support = self.embed_conditioned(support_x[None], params)
        return params, prototypes(support, support_y[None], n_way)[0]

    def fit(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Classifier:
        params, protos = self.fit_parts(support_x, support_y, n_way)
        return lambda query_x: scaled_logits(self.embed_conditioned(query_x[None], params), protos[None],
                                             self.alpha, self.distance)[0]

    def fit_module(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> nn.Module:
        """The backbone conditioned by the task's FiLM parameters, and the prototypes."""
        params, protos = self.fit_parts(support_x, support_y, n_way)
        return ScaledPrototypes(FilmedBackbone(self.backbone, params), protos, self.alpha, self.distance)

    def episode_logits(self, batch: TaskBatch) -> torch.Tensor:
        """All tasks at once (in eval mode the same logits as task by task)."""
        self.check_episode(batch.n_way, train=False)
        with torch.no_grad():
            return self.batch_logits(batch)[0]
