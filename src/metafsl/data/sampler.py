"""Episode sampling on the training device.

A split is preloaded once as a uint8 tensor; an episode is a gather by index followed by
batched conversion/normalisation/augmentation on the device.  Indices are drawn on the
CPU from a seeded ``torch.Generator`` one episode at a time, so the episodes depend only
on the seed (not on the device nor on how many episodes are drawn per call): two methods
evaluated with the same ``eval.seed`` see exactly the same test episodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from metafsl.config import FINETUNE_VIEWS_NEED_AUGMENT
from metafsl.data import augment
from metafsl.data.augment import AUGMENTATIONS
from metafsl.data.base import FewShotSplit
from metafsl.errors import UserError


@dataclass
class TaskBatch:
    """B episodes of identical shape.  Labels are 0..n_way-1 within each episode."""

    support_x: torch.Tensor  # (B, n_way * n_shot, C, H, W) float
    support_y: torch.Tensor  # (B, n_way * n_shot) int64, sorted by label
    query_x: torch.Tensor  # (B, n_way * n_query, C, H, W) float
    query_y: torch.Tensor  # (B, n_way * n_query) int64
    n_way: int
    n_shot: int
    n_query: int
    #: (B, n_way) the split's class index of each episode label (None where unknown, e.g. a
    #: user's folders); methods with a head over the training classes (TADAM) read it
    classes: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def task(self, i: int) -> "TaskBatch":
        s = slice(i, i + 1)
        return TaskBatch(self.support_x[s], self.support_y[s], self.query_x[s], self.query_y[s],
                         self.n_way, self.n_shot, self.n_query, None if self.classes is None else self.classes[s])


class Preprocess:
    """uint8 -> float in [0, 1], then optional per-channel normalisation and augmentation."""

    def __init__(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 augment: str = "none"):
        self.mean = None if mean is None else torch.tensor(mean).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(1, -1, 1, 1)
        if augment not in AUGMENTATIONS:
            raise UserError(f"Unknown augmentation '{augment}'; choose one of: {', '.join(AUGMENTATIONS)}.")
        self.augment = augment

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, *shape[-3:]).float().div_(255.0)
        if train and self.augment == "metaoptnet":
            x = metaoptnet_augment(x)
        elif train and self.augment != "none":  # koch, stroke, koch_stroke (metafsl.data.augment)
            x = augment.apply(self.augment, x)
        if self.mean is not None:  # 3 statistics on grey images: the grey channel repeated (pretrained)
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.reshape(*shape[:-3], x.shape[-3], *shape[-2:])

    def check_views(self) -> None:
        """One sentence when there is no training augmentation to draw ``views`` with."""
        if self.augment == "none":
            raise UserError(FINETUNE_VIEWS_NEED_AUGMENT)

    def finetune_views(self, choice: str):
        """What draws the views of ``eval.finetune_views=choice``: ``views`` for ``train`` (checked
        here: one sentence without an augmentation), None for ``flip_shift`` (the fine-tuning's own
        flips and shifts, ``algorithms.test_time.augment``)."""
        if choice != "train":
            return None
        self.check_views()
        return self.views

    def views(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Random training views (this pipeline's augmentation) of images ``x`` (N, C, H, W) that
        it has already made (normalised where it normalises): test-time fine-tuning with the
        augmentation the model was trained with (``eval.finetune_views=train``)."""
        self.check_views()
        if self.mean is not None:
            x = x * self.std.to(x.device) + self.mean.to(x.device)
        if self.augment == "metaoptnet":
            x = metaoptnet_augment(x)
        else:
            x = augment.apply(self.augment, x.clone(), generator)
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x


def metaoptnet_augment(x: torch.Tensor) -> torch.Tensor:
    """Batched MetaOptNet recipe: random crop with padding, colour jitter, horizontal flip."""
    n, c, h, w = x.shape
    pad = max(1, h // 10)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = (oy.view(n, 1) + ar_h).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = (ox.view(n, 1) + ar_w).view(n, 1, 1, w).expand(n, c, h, w)
    x = padded.gather(2, rows).gather(3, cols)
    # colour jitter (brightness, contrast, saturation 0.4 each)
    b = 1 + (torch.rand(n, 1, 1, 1, device=x.device) - 0.5) * 0.8
    x = x * b
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    cf = 1 + (torch.rand(n, 1, 1, 1, device=x.device) - 0.5) * 0.8
    x = (x - mean) * cf + mean
    if c == 3:
        gray = x.mean(dim=1, keepdim=True)
        sf = 1 + (torch.rand(n, 1, 1, 1, device=x.device) - 0.5) * 0.8
        x = (x - gray) * sf + gray
    flip = torch.rand(n, device=x.device) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    return x.clamp_(0, 1)


class EpisodeSampler:
    """Draws N-way K-shot episodes (plus Q queries per class) from one split.

    Support and query images of an episode are distinct images (drawn without
    replacement within each class).  Raises ``UserError`` when the episode is impossible.
    """

    def __init__(self, split: FewShotSplit, n_way: int, n_shot: int, n_query: int,
                 device: torch.device | str = "cpu", seed: int = 0, preprocess: Optional[Preprocess] = None,
                 within_group: bool = False, split_name: str = "split"):
        if n_way < 1 or n_shot < 1 or n_query < 1:
            raise UserError(f"n_way, n_shot and n_query must be at least 1 (got {n_way}, {n_shot}, {n_query}).")
        self.split, self.split_name = split, split_name
        self.n_way, self.n_shot, self.n_query = int(n_way), int(n_shot), int(n_query)
        self.device = torch.device(device)
        self.preprocess = preprocess or Preprocess()
        self.generator = torch.Generator().manual_seed(int(seed))
        need = self.n_shot + self.n_query
        counts = split.counts()
        eligible = torch.nonzero(counts >= need).flatten()
        if split.n_classes < self.n_way:
            raise UserError(
                f"Impossible episode: n_way={self.n_way} but the {split_name} split has only "
                f"{split.n_classes} classes."
            )
        if len(eligible) < self.n_way:
            raise UserError(
                f"Impossible episode: n_shot + n_query = {need} images per class, but only "
                f"{len(eligible)} classes of the {split_name} split have that many (the largest has "
                f"{int(counts.max()) if len(counts) else 0})."
            )
        self.excluded_classes = split.n_classes - len(eligible)
        self.eligible = eligible
        order = torch.argsort(split.labels.cpu(), stable=True)
        self.max_count = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        col = torch.arange(self.max_count)
        self.index = (starts.view(-1, 1) + col.view(1, -1)).clamp(max=len(order) - 1)
        self.index = order[self.index]  # (K, max_count): image indices per class (padded)
        self.valid = col.view(1, -1) < counts.view(-1, 1)
        self.groups: Optional[List[torch.Tensor]] = None
        if within_group:
            if split.groups is None:
                raise UserError(f"within-group episodes need class groups (alphabets); the {split_name} split has none.")
            gid = split.groups.cpu()[eligible]
            groups = [eligible[gid == g] for g in torch.unique(gid)]
            self.groups = [g for g in groups if len(g) >= self.n_way]
            if not self.groups:
                raise UserError(f"Impossible episode: no alphabet of the {split_name} split has {self.n_way} classes "
                                f"(the largest has {max((len(g) for g in groups), default=0)}); lower the "
                                f"episode's n_way or give the {split_name} split more classes per alphabet.")
        self._images = split.images.to(self.device)
        self._labels = split.labels.to(self.device)
        self._support_y = torch.arange(self.n_way).repeat_interleave(self.n_shot)
        self._query_y = torch.arange(self.n_way).repeat_interleave(self.n_query)

    # -- indices -------------------------------------------------------------------------
    def episode_indices(self) -> torch.Tensor:
        """(n_way, n_shot + n_query) image indices of one episode, from the generator."""
        g = self.generator
        if self.groups is None:
            pool = self.eligible
        else:
            pool = self.groups[int(torch.randint(len(self.groups), (1,), generator=g))]
        classes = pool[torch.randperm(len(pool), generator=g)[: self.n_way]]
        keys = torch.rand(self.n_way, self.max_count, generator=g)
        keys.masked_fill_(~self.valid[classes], 2.0)
        picks = keys.argsort(dim=1)[:, : self.n_shot + self.n_query]
        return self.index[classes].gather(1, picks)

    def indices(self, n_episodes: int) -> torch.Tensor:
        return torch.stack([self.episode_indices() for _ in range(n_episodes)])

    # -- tasks ---------------------------------------------------------------------------
    def sample(self, n_episodes: int = 1, train: bool = False) -> TaskBatch:
        return self.tasks(self.indices(n_episodes), train)

    def tasks(self, indices: torch.Tensor, train: bool = False) -> TaskBatch:
        """The episodes of ``indices`` (B, n_way, n_shot + n_query), as ``indices`` returns them."""
        idx = indices.to(self.device, non_blocking=True)
        x = self._images[idx]  # (B, n_way, shot+query, C, H, W) uint8
        b = idx.shape[0]
        img = x.shape[-3:]
        support = x[:, :, : self.n_shot].reshape(b, self.n_way * self.n_shot, *img)
        query = x[:, :, self.n_shot:].reshape(b, self.n_way * self.n_query, *img)
        return TaskBatch(
            self.preprocess(support, train),
            self._support_y.to(self.device).expand(b, -1),
            self.preprocess(query, train),
            self._query_y.to(self.device).expand(b, -1),
            self.n_way, self.n_shot, self.n_query, self._labels[idx[:, :, 0]],
        )

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
