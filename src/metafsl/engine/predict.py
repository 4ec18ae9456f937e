"""Classify new images with a trained run: adapt its learner to a labelled support folder (one
sub-folder of images per class) and score query images; the core of ``metafsl.api.predict`` and
``metafsl predict``.

Images are converted to the run's image size, channels and normalisation, taken from the
checkpoint alone (Omniglot runs invert dark-on-light drawings to the bright-ink form they were
trained on: ``invert=None`` decides by the dataset).  A colour image given to a grayscale model
is refused unless ``convert=True``.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from metafsl.data.images import is_image, to_chw
from metafsl.engine import checkpoint
from metafsl.engine.components import build_learner, resolve_device
from metafsl.engine.run_dir import find, write_text
from metafsl.errors import UserError

#: datasets metafsl presents with bright ink on a dark background (user drawings are the reverse)
INVERTED = {"omniglot"}


def load_image(path: Path, size: int, channels: int, invert: bool, convert: bool) -> np.ndarray:
    """uint8 (channels, size, size) from an image file, with clear errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    except (UnidentifiedImageError, OSError, ValueError):
        raise UserError(f"Cannot read {path} as an image (unreadable or corrupt file).") from None
    colour = bool((np.abs(rgb[..., 0] - rgb[..., 1]).max() > 8) or (np.abs(rgb[..., 1] - rgb[..., 2]).max() > 8))
    if channels == 1 and colour and not convert:
        raise UserError(f"{path} is a colour image but this model was trained on grayscale (1-channel) "
                        f"images; pass convert=true to convert your images to grayscale.")
    if channels not in (1, 3):
        raise UserError(f"This run's images have {channels} channels; predict handles 1 or 3.")
    return to_chw(Image.fromarray(rgb.astype(np.uint8)), size, channels, invert)


def image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p.name))


def read_support(root: Path) -> Tuple[List[str], List[List[Path]]]:
    if not root.is_dir():
        raise UserError(f"support={root} is not a folder; give a folder with one sub-folder of images per class.")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UserError(f"support={root} needs at least 2 class sub-folders (found {len(classes)}).")
    files = []
    for c in classes:
        imgs = image_files(c)
        if not imgs:
            raise UserError(f"Support class '{c.name}' ({c}) has no images.")
        files.append(imgs)
    return [c.name for c in classes], files


def read_queries(spec: str) -> List[Path]:
    files: List[Path] = []
    for part in [p for p in spec.split(",") if p]:
        path = Path(part)
        if path.is_dir():
            files.extend(image_files(path))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"Query {path} does not exist.")
    if not files:
        raise UserError(f"No query images found in query={spec}.")
    return files


def query_classes(query: str, queries: List[Path], names: List[str]) -> Optional[List[str]]:
    """The true class of each query when the query folder is labelled by sub-folders named like
    the support classes (``query/cat/*.png``, ``query/dog/*.png``): the sub-folder's name; None
    when any query is not inside such a sub-folder of a query folder."""
    roots = [Path(p) for p in query.split(",") if p and Path(p).is_dir()]
    known, truth = set(names), []
    for q in queries:
        parts = next((q.relative_to(r).parts for r in roots if q.is_relative_to(r)), ())
        if len(parts) < 2 or parts[0] not in known:
            return None
        truth.append(parts[0])
    return truth


def load_learner(run: Path, which: str, device: torch.device):
    """The trained algorithm and the pixel pipeline of a run dir, from its checkpoint alone
    (checkpoints before version 2 carry no normalisation statistics: those reload the dataset)."""
    if not run.is_dir():
        raise UserError(f"Run dir {run} does not exist.")
    path = find(run, which)
    ck = checkpoint.load(path)
    cfg = ck["config"]
    pre = checkpoint.Preprocessing.from_checkpoint(ck) or _legacy_preprocessing(cfg)
    preprocess = pre.preprocess()
    algo = build_learner(cfg, pre.channels, pre.image_size)
    checkpoint.load_weights(algo, ck["model"], path)
    return algo.to(device).eval(), preprocess, cfg, pre.channels, pre.image_size


def _legacy_preprocessing(cfg: Dict[str, Any]) -> checkpoint.Preprocessing:
    ds_cfg = cfg["dataset"]
    pre = checkpoint.Preprocessing(int(ds_cfg.get("image_size", 28)), int(ds_cfg.get("channels", 1)))
    if ds_cfg.get("normalize", "none") == "dataset":
        from metafsl.data import load_dataset

        stats = load_dataset(ds_cfg, cfg["paths"])  # cached: only its mean/std are used
        pre.mean, pre.std = list(stats.mean), list(stats.std)
    return pre


@dataclass
class Predictions:
    """Each query's predicted class and the probabilities of every support class."""

    names: List[str]
    queries: List[Path]
    probs: torch.Tensor
    support_files: List[List[Path]]
    algo: str

    @property
    def best(self) -> Tuple[List[float], List[int]]:
        best_p, best = self.probs.max(-1)
        return best_p.tolist(), best.tolist()

    def write_csv(self, target: Path) -> None:
        """One row per query: file, predicted class, its probability, every class's probability."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "predicted", "probability"] + [f"p_{n}" for n in self.names])
        w.writerows(self.rows())
        write_text(target, buf.getvalue(), what=f"the predictions to {target}")

    def rows(self) -> List[List[Any]]:
        best_p, best = self.best
        return [[str(q), self.names[k], round(p, 6)] + [round(x, 6) for x in row]
                for q, k, p, row in zip(self.queries, best, best_p, self.probs.tolist())]


def predict(run: Path, support: Path, query: str, which: str = "best", device_name: str = "cpu",
            invert: Optional[bool] = None, convert: bool = False) -> Predictions:
    """Adapt the run's learner to ``support`` and classify ``query`` (invert=None: auto)."""
    device = resolve_device(device_name)
    algo, preprocess, cfg, channels, size = load_learner(run, which, device)
    if invert is None:
        invert = cfg["dataset"]["name"] in INVERTED
    names, support_files = read_support(support)
    queries = read_queries(query)

    def tensor(paths: List[Path]) -> torch.Tensor:
        arr = np.stack([load_image(p, size, channels, invert, convert) for p in paths])
        return preprocess(torch.from_numpy(arr).to(device), train=False)

    flat = [p for files in support_files for p in files]
    labels = torch.tensor([i for i, files in enumerate(support_files) for _ in files], device=device)
    probs = algo.adapt(tensor(flat), labels)(tensor(queries)).float().softmax(-1).cpu()
    return Predictions(names, queries, probs, support_files, cfg["algo"]["name"])
