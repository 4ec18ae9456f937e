"""Plain labelled mini-batches over a whole split (for transfer-learning baselines).

Labels are the split's global class labels (0..K-1 over all training classes).  Batches
are drawn epoch by epoch from seeded permutations, so a resumed run continues exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from metafsl.data.base import FewShotSplit
from metafsl.data.sampler import Preprocess
from metafsl.errors import UserError


@dataclass
class LabelledBatch:
    x: torch.Tensor  # (N, C, H, W) float
    y: torch.Tensor  # (N,) int64 global labels

    def __len__(self) -> int:
        return self.x.shape[0]


class BatchSampler:
    """``sample()`` returns the next ``batch_size`` images of the current epoch's permutation."""

    def __init__(self, split: FewShotSplit, batch_size: int, device="cpu", seed: int = 0,
                 preprocess: Optional[Preprocess] = None):
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1 (got {batch_size}).")
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.preprocess = preprocess or Preprocess()
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.n_classes = split.n_classes
        self.generator = torch.Generator().manual_seed(int(seed))
        self.order = torch.randperm(len(self.labels), generator=self.generator)
        self.pos = 0

    def next_indices(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need > 0:
            if self.pos >= len(self.order):
                self.order = torch.randperm(len(self.labels), generator=self.generator)
                self.pos = 0
            take = self.order[self.pos:self.pos + need]
            self.pos += len(take)
            need -= len(take)
            parts.append(take)
        return torch.cat(parts)

    def sample(self, n: int = 1, train: bool = True) -> LabelledBatch:
        """One mini-batch (``n``, the engine's meta-batch size, is not used)."""
        idx = self.next_indices().to(self.device)
        return LabelledBatch(self.preprocess(self.images[idx], train), self.labels[idx])

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.pos = state["order"].clone(), int(state["pos"])
