"""glyphs: a built-in, procedurally generated handwritten-glyph dataset (no files, no download).

Each class is a random "character" made of 1-4 pen strokes.  A stroke is a cubic Bezier
curve whose shape is drawn from a few families (straight line, arc, hook, loop); strokes
after the first are often *attached* to an earlier stroke (starting at its start, end or a
point along it), which gives characters the joined structure of real scripts.  Each example
redraws its character with motor noise: jittered control points, a random affine distortion
(rotation, anisotropic scale, shear, translation) and a random stroke width.  Rendering is an
anti-aliased distance-to-stroke rasterisation.  Everything is deterministic from ``seed``.

Images are grayscale, ink bright on a dark background (as metafsl presents Omniglot).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
import torch

from metafsl.data.base import FewShotDataset, channel_stats, from_class_lists
from metafsl.data.checks import check_class_split
from metafsl.errors import UserError

VERSION = 1  # of the generator: a change rebuilds cached datasets
MAX_STROKES = 4
POINTS = 64  # points per stroke when rasterising (< 0.5 px apart at 28 px)


def _stroke(rng: np.random.Generator, start: np.ndarray) -> np.ndarray:
    """Four control points of one cubic Bezier stroke beginning at ``start``."""
    kind = rng.choice(4, p=[0.35, 0.3, 0.2, 0.15])
    length = rng.uniform(0.5, 1.2)
    angle = rng.uniform(0, 2 * math.pi)
    d = np.array([math.cos(angle), math.sin(angle)]) * length
    end = start + d
    normal = np.array([-d[1], d[0]])
    if kind == 0:  # straight line
        p1, p2 = start + d / 3, start + 2 * d / 3
    elif kind == 1:  # arc (both handles on one side)
        bend = rng.uniform(0.3, 0.7) * rng.choice([-1, 1])
        p1, p2 = start + d / 3 + bend * normal, start + 2 * d / 3 + bend * normal
    elif kind == 2:  # hook / S-curve (handles on opposite sides)
        bend = rng.uniform(0.3, 0.7)
        p1, p2 = start + d / 3 + bend * normal, start + 2 * d / 3 - bend * normal
    else:  # loop: handles cross over
        bend = rng.uniform(0.6, 1.0) * rng.choice([-1, 1])
        p1, p2 = start + 1.3 * d + bend * normal, start - 0.3 * d + bend * normal
    return np.stack([start, p1, p2, end])


def _character(rng: np.random.Generator) -> Tuple[np.ndarray, int]:
    """(MAX_STROKES, 4, 2) control points, centred and scaled to the unit box; stroke count."""
    n = int(rng.choice([1, 2, 3, 4], p=[0.1, 0.35, 0.35, 0.2]))
    strokes = []
    for i in range(n):
        if i == 0 or rng.random() < 0.3:
            start = rng.uniform(-0.5, 0.5, size=2)
        else:  # attach to an earlier stroke: at its start, its end, or along it
            prev = strokes[rng.integers(len(strokes))]
            t = rng.choice([0.0, 1.0, rng.uniform(0.2, 0.8)])
            start = _bezier(prev[None], np.array([t]))[0, 0]
        strokes.append(_stroke(rng, start))
    ctrl = np.stack(strokes)
    pts = _bezier(ctrl, np.linspace(0, 1, 9)).reshape(-1, 2)
    lo, hi = pts.min(0), pts.max(0)
    scale = 1.4 / max(float((hi - lo).max()), 1e-6)
    ctrl = (ctrl - (lo + hi) / 2) * scale
    out = np.full((MAX_STROKES, 4, 2), 50.0)  # unused strokes sit far outside the image
    out[:n] = ctrl
    return out, n


def _bezier(ctrl: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points of cubic Beziers: ctrl (..., 4, 2), t (T,) -> (..., T, 2)."""
    t = t.reshape(-1, 1)
    basis = np.concatenate([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], 1)
    return np.einsum("tk,...kd->...td", basis, ctrl)


def _examples(rng: np.random.Generator, ctrl: np.ndarray, n_strokes: int, n: int):
    """Noisy redraws of one character: polyline points (n, S, POINTS, 2) and widths (n,)."""
    jitter = rng.normal(0, 0.05, size=(n,) + ctrl.shape)
    jitter[:, n_strokes:] = 0
    pts = _bezier(ctrl[None] + jitter, np.linspace(0, 1, POINTS))  # (n, S, T, 2)
    rot = rng.normal(0, 0.15, n)
    sx, sy = rng.normal(1, 0.08, n), rng.normal(1, 0.08, n)
    shear = rng.normal(0, 0.12, n)
    tx, ty = rng.normal(0, 0.07, n), rng.normal(0, 0.07, n)
    c, s = np.cos(rot), np.sin(rot)
    a = np.stack([np.stack([c * sx, -s * sy + shear * c * sx], -1),
                  np.stack([s * sx, c * sy + shear * s * sx], -1)], -2)  # (n, 2, 2)
    real = pts[:, :n_strokes]
    real = np.einsum("nij,nstj->nsti", a, real) + np.stack([tx, ty], -1)[:, None, None]
    pts[:, :n_strokes] = real
    widths = rng.uniform(0.05, 0.095, n)
    return pts, widths


def render(points: torch.Tensor, widths: torch.Tensor, size: int) -> torch.Tensor:
    """Rasterise strokes given as dense points.

    points (N, S, T, 2) in [-1, 1]^2 (x right, y down), consecutive points closer than
    half a pixel; widths (N,) stroke half-widths in the same units -> uint8 (N, 1, size, size).
    Each point inks only the few pixels around it (anti-aliased disk), scattered with max.
    """
    n = points.shape[0]
    pix = (points.reshape(n, -1, 2) + 1) * (size / 2) - 0.5  # pixel coordinates of centres
    half = widths.view(n, 1, 1) * (size / 2)  # half-width in pixels
    r = int(math.ceil(float(half.max()) + 1))
    off = torch.arange(-r, r + 1, dtype=torch.float32)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    offsets = torch.stack([ox.flatten(), oy.flatten()], -1)  # (W, 2)
    cells = pix.round()[:, :, None, :] + offsets  # (N, M, W, 2)
    dist = (cells - pix[:, :, None, :]).norm(dim=-1)
    ink = (half - dist + 0.5).clamp_(0, 1)
    inside = ((cells >= 0) & (cells <= size - 1)).all(-1)
    flat = (cells[..., 1] * size + cells[..., 0]).long().clamp_(0, size * size - 1)
    ink = torch.where(inside, ink, torch.zeros(()))
    canvas = torch.zeros(n, size * size)
    canvas.scatter_reduce_(1, flat.view(n, -1), ink.view(n, -1), reduce="amax")
    return (canvas * 255).round_().to(torch.uint8).view(n, 1, size, size)


def check_arguments(n_classes: int = 1200, examples_per_class: int = 20, train_fraction: float = 0.64,
                    val_fraction: float = 0.16, **_) -> Dict[str, int]:
    """The classes of each split ({split: count}), or one sentence when a split would be empty;
    checked with the config before any work, and again by ``generate``."""
    if examples_per_class < 1:
        raise UserError(f"dataset.examples_per_class must be at least 1 (got {examples_per_class}).")
    return check_class_split(n_classes, train_fraction, val_fraction, f"dataset.n_classes={n_classes} gives",
                             "the fewest dataset.n_classes that works with these fractions is {fewest}")


def generate(n_classes: int = 1200, examples_per_class: int = 20, image_size: int = 28,
             seed: int = 0, train_fraction: float = 0.64, val_fraction: float = 0.16) -> FewShotDataset:
    sizes = check_arguments(n_classes, examples_per_class, train_fraction, val_fraction)
    per_class = []
    for k in range(n_classes):
        rng = np.random.default_rng([seed, k])
        ctrl, n_strokes = _character(rng)
        pts, widths = _examples(rng, ctrl, n_strokes, examples_per_class)
        per_class.append((torch.from_numpy(pts).float(), torch.from_numpy(widths).float()))
    images = []
    chunk = max(1, 256 // examples_per_class)
    for i in range(0, n_classes, chunk):
        group = per_class[i:i + chunk]
        pts = torch.cat([p for p, _ in group])
        w = torch.cat([w for _, w in group])
        images.extend(render(pts, w, image_size).split(examples_per_class))
    order = np.random.default_rng([seed, 10**6]).permutation(n_classes)
    n_train, n_val = sizes["train"], sizes["val"]
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
             "test": order[n_train + n_val:]}
    splits = {  # no val split when val_fraction is 0
        name: from_class_lists([images[k] for k in ks], [f"glyph{k:05d}" for k in ks])
        for name, ks in parts.items() if len(ks)
    }
    mean, std = channel_stats(splits["train"].images)
    return FewShotDataset("glyphs", splits, mean, std)


def load(n_classes: int = 1200, examples_per_class: int = 20, image_size: int = 28, seed: int = 0,
         train_fraction: float = 0.64, val_fraction: float = 0.16,
         cache_dir: str = "~/.cache/metafsl") -> FewShotDataset:
    """``generate`` through the on-disk cache (rendering 1200 classes takes a few seconds)."""
    from pathlib import Path

    from metafsl.data.cache import CacheSpec, cached_dataset

    options = dict(n_classes=n_classes, examples_per_class=examples_per_class, image_size=image_size,
                   seed=seed, train_fraction=train_fraction, val_fraction=val_fraction)
    check_arguments(**options)
    spec = CacheSpec("glyphs", Path(cache_dir).expanduser(), cache_dir, options, version=VERSION)
    return cached_dataset(spec, lambda: generate(**options))
