"""Batched image augmentations on the device, and the fixed views of test-time augmentation.

Written here rather than taken from torchvision.transforms.v2: those draw one set of parameters
per call (one affine for the whole batch), while episodes need one draw per image, batched, on
the training device, from an optional seeded generator.

- ``koch_affine``: Koch, Zemel & Salakhutdinov (2015)'s distortions of Omniglot characters:
  rotation in [-10, 10] degrees, shear in [-0.3, 0.3], scale in [0.8, 1.2] (each axis) and
  translation in [-2, 2] pixels of a 105-pixel image (scaled to the image size), each component
  applied with probability 1/2; the uncovered border is background (0: the Omniglot loader
  draws ink bright on black).
- ``stroke_width``: thicker or thinner pen strokes, a grey-level dilation (3x3 max-pool) or
  erosion (3x3 min-pool) blended in by a per-image amount in [-1, 1] (bright ink assumed).
  ``random_stroke`` draws that amount in [-1, 1] scaled by side / 105 (at most 1), as Koch's
  translations are: a 3x3 kernel is one pixel of the 105-pixel release at 105x105 but several at
  28x28, where a full erosion left 2% of a character's ink (54% at 105x105, measured on
  background characters) and the unscaled jitter cost 4 to 5 points of within-alphabet accuracy
  (docs/benchmarks.md, issue 30 section 1).
- ``tta_views``: deterministic views for test-time augmentation: the image, its shifts by 1/28
  of its side in the four directions, then the horizontal flips of those five.
- ``rotation_turns`` / ``mean_over_turns``: ``eval.tta_rotations``, an episode classified again
  with every image (support and queries alike) turned by 90, 180 or 270 degrees, the class
  probabilities averaged. A model trained with rotated classes (``dataset.rotations``, Santoro et
  al.'s Omniglot classes) has seen each turned character as a class of its own, so each turn is
  a valid view of the same episode; averaging probabilities (not embeddings) keeps each turn's
  distances as the model learned them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

#: ``dataset.augment`` choices (also listed in ``metafsl.config``; a test keeps them equal)
AUGMENTATIONS = ("none", "metaoptnet", "koch", "stroke", "koch_stroke")
#: how many distinct views ``tta_views`` has
MAX_VIEWS = 10
#: ``eval.tta_rotations`` choices (``rotation_turns``)
ROTATION_VIEWS = (1, 2, 4)


def _uniform(n: int, low: float, high: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _coin(n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < 0.5).float()


def koch_matrices(n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n, 2, 3) random affine matrices in ``affine_grid``'s normalised coordinates."""
    theta = math.radians(10.0) * _uniform(n, -1, 1, generator) * _coin(n, generator)
    shear = _uniform(n, -0.3, 0.3, generator).mul(_coin(n, generator)), \
        _uniform(n, -0.3, 0.3, generator).mul(_coin(n, generator))
    on = _coin(n, generator)
    scale = (1 + on * (_uniform(n, 0.8, 1.2, generator) - 1), 1 + on * (_uniform(n, 0.8, 1.2, generator) - 1))
    shift = 2.0 * 2.0 / 105.0  # 2 pixels of 105, in units of half the side
    on = _coin(n, generator)
    tx, ty = on * _uniform(n, -shift, shift, generator), on * _uniform(n, -shift, shift, generator)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shr = torch.stack([torch.stack([torch.ones(n), shear[0]], -1), torch.stack([shear[1], torch.ones(n)], -1)], -2)
    scl = torch.diag_embed(torch.stack(scale, -1))
    # grid_sample maps output coordinates to input ones: the inverse of the drawn distortion
    linear = torch.linalg.inv(rot @ shr @ scl)
    offset = -(linear @ torch.stack([tx, ty], -1).unsqueeze(-1))
    return torch.cat([linear, offset], -1)


def koch_affine(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Koch et al.'s random affine distortion of each image of ``x`` (N, C, H, W) float."""
    if not len(x):
        return x
    matrices = koch_matrices(len(x), generator).to(x.device, x.dtype)
    grid = F.affine_grid(matrices, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def stroke_width(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Strokes of ``x`` (N, C, H, W), bright ink, thickened (``amount`` > 0, up to a 3x3 dilation
    at 1) or thinned (< 0, up to a 3x3 erosion at -1); ``amount`` (N,) per image."""
    a = amount.to(x.device, x.dtype).view(-1, 1, 1, 1)
    dilated = F.max_pool2d(x, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
    target = torch.where(a >= 0, dilated, eroded)
    return x + a.abs() * (target - x)


#: the side of the Omniglot release's images, the size the stroke jitter's 3x3 kernel was meant for
RELEASE_SIDE = 105


def random_stroke(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``stroke_width`` with an amount drawn uniformly in [-1, 1] per image, scaled by the side
    over 105 (at most 1): the same jitter, in the release's pixels, at every image size."""
    scale = min(1.0, x.shape[-1] / RELEASE_SIDE)
    return stroke_width(x, scale * _uniform(len(x), -1, 1, generator))


def apply(name: str, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The ``dataset.augment`` choice ``name`` (other than none, metaoptnet) on ``x`` (N, C, H, W)."""
    if name in ("stroke", "koch_stroke"):
        x = random_stroke(x, generator)
    if name in ("koch", "koch_stroke"):
        x = koch_affine(x, generator)
    return x.clamp_(0, 1)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` moved by (dy, dx) pixels, the uncovered border zero."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[..., top: top + h, left: left + w]


def tta_views(x: torch.Tensor, n: int) -> list:
    """The first ``n`` (1..10) deterministic views of images ``x`` (N, C, H, W)."""
    s = max(1, round(int(x.shape[-1]) / 28))  # int(): a traced shape (export) is a tensor
    base = [x, _shift(x, 0, s), _shift(x, 0, -s), _shift(x, s, 0), _shift(x, -s, 0)]
    views = base + [v.flip(-1) for v in base]
    return views[:n]


def rotation_turns(n: int) -> List[int]:
    """The quarter turns of ``eval.tta_rotations=n``: 1 the image alone, 2 also upside down,
    4 every multiple of 90 degrees."""
    return [0, 1, 2, 3] if n >= 4 else [0, 2] if n == 2 else [0]


def turned(x: torch.Tensor, k: int) -> torch.Tensor:
    """Images ``x`` (..., H, W) turned ``k`` quarter turns counter-clockwise (contiguous)."""
    return torch.rot90(x, k, dims=(-2, -1)).contiguous() if k % 4 else x


def turned_task(task, k: int):
    """An episode batch (``metafsl.data.sampler.TaskBatch``) with every support and query image
    turned ``k`` quarter turns; labels unchanged."""
    if k % 4 == 0:
        return task
    return dataclasses.replace(task, support_x=turned(task.support_x, k), query_x=turned(task.query_x, k))


def mean_probabilities(logits: List[torch.Tensor]) -> torch.Tensor:
    """The mean of the turns' class probabilities (softmax of each turn's logits)."""
    return torch.stack([x.float().softmax(-1) for x in logits]).mean(0)


def mean_over_turns(logits_of: Callable, task, n: int) -> torch.Tensor:
    """Class probabilities of the episodes ``task``, averaged over the turns of
    ``eval.tta_rotations=n``: ``mean_probabilities`` of ``logits_of(turned_task(task, k))``."""
    return mean_probabilities([logits_of(turned_task(task, k)) for k in rotation_turns(n)])
