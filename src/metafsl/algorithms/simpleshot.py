"""SimpleShot (Wang, Chao, Weinberger & van der Maaten, 2019): nearest centroid on centred,
L2-normalised features ("CL2N").

Every embedding has the mean embedding of the training images subtracted and is scaled to unit
length; a query goes to the class whose support centroid (the mean of the transformed support
embeddings) is nearest in Euclidean distance.  The training mean is a buffer of the learner
(``train_mean``, in the checkpoint: test, predict and export use it), computed from every
training image before training starts (``prepare_training_images``), so that a run of
``trainer.iterations=0`` on a frozen pretrained backbone is the paper's evaluation.  When the
backbone is trained too (episodes, the prototype loss on the same logits), the mean follows the
training embeddings as a running average (``momentum``).
"""
from __future__ import annotations

from typing import Iterable, Tuple

import torch
from torch import nn

from metafsl.algorithms.base import accuracy
from metafsl.algorithms.metric import MetricLearner
from metafsl.algorithms.protonet import prototypes, sq_euclidean_logits
from metafsl.data.sampler import TaskBatch


def centred_l2(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """CL2N: (x - mean) / ||x - mean|| along the last dimension."""
    return nn.functional.normalize(x - mean, dim=-1)


class SimpleShot(MetricLearner):
    """Nearest centroid on features centred on the training mean and L2-normalised (see the module docstring).

    Arguments:
        temperature: logits are -temperature x the squared distance (does not change the
            nearest centroid; it sets the training loss's and predict's probabilities).
        momentum: weight of each training batch in the running training mean (0: keep the mean
            computed before training).

    Example:
        metafsl train algo=simpleshot backbone=resnet18 backbone.weights=imagenet backbone.freeze=true trainer.iterations=0
    """

    sees_training_images = True

    def __init__(self, backbone: nn.Module, temperature: float = 10.0, momentum: float = 0.01):
        super().__init__(backbone)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.register_buffer("train_mean", torch.zeros(int(backbone.out_features)))

    def prepare_training_images(self, batches: Iterable[torch.Tensor]) -> None:
        was_training = self.backbone.training
        self.backbone.eval()
        total, count = None, 0
        with torch.no_grad():
            for x in batches:
                z = self.embed(x).double()
                total = z.sum(0) if total is None else total + z.sum(0)
                count += len(z)
        self.backbone.train(was_training)
        if count:
            self.train_mean.copy_((total / count).to(self.train_mean.dtype))

    def logits_from_embeddings(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                               n_way: int) -> torch.Tensor:
        support, query = centred_l2(support, self.train_mean), centred_l2(query, self.train_mean)
        return self.temperature * sq_euclidean_logits(query, prototypes(support, support_y, n_way))

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        support, query = self.embed_episodes(batch)
        if self.training and self.momentum > 0:
            with torch.no_grad():
                seen = torch.cat([support.flatten(0, 1), query.flatten(0, 1)]).mean(0)
                self.train_mean.lerp_(seen.to(self.train_mean.dtype), self.momentum)
        logits = self.logits_from_embeddings(support, batch.support_y, query, batch.n_way)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, accuracy(logits.detach(), batch.query_y).mean()
