"""What every dataset converges to once loaded: one uint8 tensor and labels per split."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch

from metafsl.data.report import DataReport, dropped_classes

SPLITS = ("train", "val", "test")


@dataclass
class FewShotSplit:
    """All images of one split.

    images: uint8 (N, C, H, W); labels: int64 (N,) with classes numbered 0..K-1;
    class_names: K names; groups: optional int64 (K,) group id of each class
    (the alphabet for Omniglot), used for within-group episodes.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: List[str]
    groups: Optional[torch.Tensor] = None
    group_names: Optional[List[str]] = None

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.dim() == 4, self.images.shape
        assert self.labels.shape == (self.images.shape[0],)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.n_classes)


@dataclass
class FewShotDataset:
    name: str
    splits: Dict[str, FewShotSplit]
    # Per-channel mean/std of the training images in [0, 1] (used when normalize=dataset).
    mean: List[float] = field(default_factory=list)
    std: List[float] = field(default_factory=list)
    # Files that could not be read, reported by path and skipped.
    skipped: List[str] = field(default_factory=list)
    # Entries found but not used, each "<path> (<reason>)": stray files, symbolic-link loops.
    ignored: List[str] = field(default_factory=list)

    def report(self, need: Optional[Mapping[str, int]] = None) -> DataReport:
        """What loading left out; with ``need`` ({split: images per class}, see
        ``report.episode_need``) also the classes too small for an episode."""
        need = dict(need or {})
        dropped = {k: dropped_classes(s.counts().tolist(), s.class_names, need.get(k))
                   for k, s in self.splits.items()}
        return DataReport(list(self.skipped), list(self.ignored), {k: v for k, v in dropped.items() if v}, need)

    def __getitem__(self, split: str) -> FewShotSplit:
        return self.splits[split]

    @property
    def channels(self) -> int:
        return int(next(iter(self.splits.values())).images.shape[1])

    @property
    def image_size(self) -> int:
        return int(next(iter(self.splits.values())).images.shape[-1])


def merge_splits(a: FewShotSplit, b: FewShotSplit) -> FewShotSplit:
    """One split holding the classes of ``a`` then those of ``b`` (labels and groups renumbered)."""
    labels = torch.cat([a.labels, b.labels + a.n_classes])
    groups, group_names = None, None
    if a.groups is not None and b.groups is not None:
        names_a, names_b = a.group_names or [], b.group_names or []
        groups = torch.cat([a.groups, b.groups + (len(names_a) if names_a else int(a.groups.max()) + 1)])
        group_names = (names_a + names_b) if names_a and names_b else None
    return FewShotSplit(torch.cat([a.images, b.images]), labels, a.class_names + b.class_names, groups, group_names)


def with_val_in_train(ds: FewShotDataset) -> FewShotDataset:
    """``dataset.trainval=true``: train on the training and validation classes together (the final
    models of Snell et al.'s released code); no validation split is left."""
    if "val" not in ds.splits:
        return ds
    splits = {k: v for k, v in ds.splits.items() if k != "val"}
    splits["train"] = merge_splits(ds.splits["train"], ds.splits["val"])
    mean, std = channel_stats(splits["train"].images)
    return FewShotDataset(ds.name, splits, mean, std, list(ds.skipped), list(ds.ignored))


def channel_stats(images: torch.Tensor, max_images: int = 20000):
    """Per-channel mean and std in [0, 1] of (a sample of) a uint8 image tensor."""
    x = images[:max_images].float().div_(255)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


def from_class_lists(per_class: List[torch.Tensor], names: List[str], groups=None, group_names=None):
    """Build a split from a list of (n_i, C, H, W) uint8 tensors, one per class."""
    labels = torch.cat([torch.full((len(x),), i, dtype=torch.long) for i, x in enumerate(per_class)])
    images = torch.cat(per_class) if per_class else torch.zeros(0, 1, 1, 1, dtype=torch.uint8)
    g = None if groups is None else torch.as_tensor(groups, dtype=torch.long)
    return FewShotSplit(images.contiguous(), labels, list(names), g, group_names)
