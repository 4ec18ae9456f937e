"""Shared steps of the file-based loaders: decode listed files into a split, resize arrays,
and check a loader's settings (source files are tracked for the decode cache in ``cache``)."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from metafsl.data.base import FewShotDataset, FewShotSplit, channel_stats
from metafsl.data.checks import check_disjoint
from metafsl.data.convert import grey, resized
from metafsl.data.images import decode_many
from metafsl.errors import UserError


def check_shape(image_size: int, channels: int) -> None:
    if channels not in (1, 3):
        raise UserError(f"dataset.channels must be 1 (grayscale) or 3 (RGB), not {channels}.")
    if image_size < 4:
        raise UserError(f"dataset.image_size must be at least 4 preprocess, not {image_size}.")


def split_from_files(read: Callable[[str], bytes], files: Sequence[Tuple[str, str]], classes: Sequence[str],
                     image_size: int, channels: int, where: str, invert: bool = False,
                     groups: Optional[Sequence[int]] = None,
                     group_names: Optional[List[str]] = None) -> Tuple[FewShotSplit, List[str]]:
    """Decode ``files`` = [(file name, class name)] into a split whose classes are ``classes``
    (in that order).  Unreadable files are returned as ``'<where>/<name>'`` and left out."""
    cid = {c: i for i, c in enumerate(classes)}
    names = [f for f, _ in files]
    images, kept, bad = decode_many(read, names, image_size, channels, invert=invert)
    labels = torch.tensor([cid[files[i][1]] for i in kept], dtype=torch.long)
    order = torch.argsort(labels, stable=True)
    g = None if groups is None else torch.as_tensor(list(groups), dtype=torch.long)
    split = FewShotSplit(images[order].contiguous(), labels[order], list(classes), g, group_names)
    return split, [f"{where}/{b}" for b in bad]


def resize_array(images: np.ndarray, image_size: int, channels: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB array -> uint8 (N, channels, s, s) tensor (antialiased resize,
    ITU-R 601 luma for grayscale)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return resized(grey(x) if channels == 1 else x, image_size).contiguous()


def finish_dataset(splits: Dict[str, FewShotSplit], skipped: List[str], name: str,
                   ignored: Optional[List[str]] = None) -> FewShotDataset:
    """Drop empty splits, require a training split with images and classes in one split only,
    add the training images' channel stats."""
    splits = {k: v for k, v in splits.items() if v.n_classes > 0}  # e.g. no val folder
    if "train" not in splits or not len(splits["train"].labels):
        raise UserError(f"The {name} training split holds no readable images.")
    check_disjoint({k: v.class_names for k, v in splits.items()}, source=name)
    mean, std = channel_stats(splits["train"].images)
    return FewShotDataset(name, splits, mean, std, skipped, list(ignored or []))
