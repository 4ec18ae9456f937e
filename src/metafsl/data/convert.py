"""A dataset's images converted to another image size and number of channels: a run tested on
a domain it was not trained on sees the images as it was trained to (``metafsl test run=<run>
dataset=<another>``).  Grey to RGB repeats the channel; RGB to grey is the ITU-R 601 luma
(as PIL's ``convert("L")``); sizes change by antialiased bilinear resizing."""
from __future__ import annotations

import dataclasses

import torch

from metafsl.data.base import FewShotDataset
from metafsl.errors import UserError

LUMA = (0.299, 0.587, 0.114)


def grey(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> uint8 grey (N, 1, H, W), ITU-R 601 luma."""
    w = torch.tensor(LUMA).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def resized(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, image_size, image_size), antialiased bilinear, in chunks
    (bounded memory for large splits)."""
    if x.shape[-2:] == (image_size, image_size):
        return x
    out = []
    for i in range(0, len(x), 2048):
        chunk = torch.nn.functional.interpolate(x[i:i + 2048].float(), size=(image_size, image_size),
                                                mode="bilinear", antialias=True, align_corners=False)
        out.append(chunk.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else x.new_zeros(0, x.shape[1], image_size, image_size)


def convert_images(images: torch.Tensor, channels: int, image_size: int, name: str = "the dataset") -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, channels, image_size, image_size)."""
    c = images.shape[1]
    if (c, channels) not in ((1, 1), (3, 3), (1, 3), (3, 1)):
        raise UserError(f"The images of {name} have {c} channels and the run was trained on {channels}; "
                        "only grey (1) and RGB (3) images convert into each other.")
    x = resized(grey(images) if c == 3 and channels == 1 else images, image_size)
    if c == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def to_shape(ds: FewShotDataset, channels: int, image_size: int) -> FewShotDataset:
    """``ds`` with every split's images of ``channels`` channels and ``image_size`` pixels a side
    (``ds`` itself when they already are)."""
    if ds.channels == channels and ds.image_size == image_size:
        return ds
    splits = {k: dataclasses.replace(s, images=convert_images(s.images, channels, image_size, f"dataset={ds.name}"))
              for k, s in ds.splits.items()}
    return dataclasses.replace(ds, splits=splits)


