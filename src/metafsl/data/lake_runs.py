"""Lake et al. (2015) one-shot classification runs, as released in ``all_runs.zip``.

Each run ``runNN/`` holds ``training/class01.png`` ... ``class20.png`` (one drawing of each of
20 characters), ``test/item01.png`` ... ``item20.png`` (another drawer's drawing of each) and
``class_labels.txt``, whose lines ``runNN/test/itemKK.png runNN/training/classMM.png`` give
the answer of each trial.  Images are 105x105, ink dark on white; they are inverted (ink
bright, as the Omniglot loader presents them) and resized to the model's image size.

A run becomes one ``TaskBatch``: a 20-way 1-shot episode whose 20 queries are the trials.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List

import torch

from metafsl.data.checks import check_each_once
from metafsl.data.images import Archive, decode
from metafsl.data.sampler import Preprocess, TaskBatch
from metafsl.errors import UserError

LABELS = "class_labels.txt"


@dataclass
class LakeRun:
    """One run: uint8 support (n, C, s, s) in class order, queries sorted by their answer."""

    name: str
    support: torch.Tensor
    query: torch.Tensor
    answers: torch.Tensor  # (n,) class index (0-based) of each query
    query_names: List[str]

    def task(self, preprocess: Preprocess, device) -> TaskBatch:
        n = self.support.shape[0]
        per_class = torch.bincount(self.answers, minlength=n)
        n_query = int(per_class[0])
        if not bool((per_class == n_query).all()):  # not one query count for every class
            raise UserError(f"Run {self.name} does not test every class equally often; cannot score it as one episode.")
        order = torch.argsort(self.answers, stable=True)
        return TaskBatch(
            preprocess(self.support.unsqueeze(0).to(device), False),
            torch.arange(n, device=device).unsqueeze(0),
            preprocess(self.query[order].unsqueeze(0).to(device), False),
            self.answers[order].unsqueeze(0).to(device),
            n, 1, n_query,
        )


def _class_number(path: str, kind: str, where: str) -> int:
    m = re.search(rf"{kind}(\d+)\.png$", path)
    if not m:
        raise UserError(f"Unexpected entry {path!r} in {where}: expected .../{kind}NN.png.")
    return int(m.group(1))


def _image(archive: Archive, names, name: str, where: str, image_size: int, channels: int,
           invert: bool) -> torch.Tensor:
    if name not in names:
        raise UserError(f"{where} names {name}, which is not in {archive.path}.")
    try:
        data = decode(archive.read(name), image_size, channels, invert=invert)
    except Exception:  # any decoding failure: the run cannot be scored
        raise UserError(f"Image {name} in {archive.path} cannot be read; the run is incomplete.") from None
    return torch.from_numpy(data.copy())


def _read_run(archive: Archive, names, label_file: str, image_size: int, channels: int,
              invert: bool) -> LakeRun:
    base = label_file[: -len(LABELS)].rstrip("/")  # 'runNN' (maybe under a top folder)
    top = "/".join(base.split("/")[:-1])
    prefix = f"{top}/" if top else ""  # class_labels.txt paths start at runNN/
    where = f"{archive.path}:{label_file}"
    pairs = []
    for line in archive.read(label_file).decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"Line {line!r} of {where} is not '<test image> <training image>'.")
        pairs.append((prefix + parts[0], prefix + parts[1]))
    check_each_once({where: [q for q, _ in pairs]}, what="Test item")
    numbers = {t: _class_number(t, "class", where) for _, t in pairs}
    classes = sorted(numbers, key=numbers.__getitem__)
    cid = {c: i for i, c in enumerate(classes)}
    support = torch.stack([_image(archive, names, c, where, image_size, channels, invert) for c in classes])
    query = torch.stack([_image(archive, names, q, where, image_size, channels, invert) for q, _ in pairs])
    answers = torch.tensor([cid[t] for _, t in pairs], dtype=torch.long)
    return LakeRun(base.split("/")[-1], support, query, answers, [q for q, _ in pairs])


def read_runs(path: Path, image_size: int, channels: int = 1, invert: bool = True) -> List[LakeRun]:
    """All runs in ``all_runs.zip`` or its extracted folder, in name order."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Lake runs not found at {path}; protocol.root must be all_runs.zip from "
                        "https://github.com/brendenlake/omniglot (python/one-shot-classification) "
                        "or its extracted folder.")
    archive = Archive(path)
    try:
        names = set(archive.names())
        label_files = sorted(n for n in names if n.split("/")[-1] == LABELS)
        if not label_files:
            raise UserError(f"No runNN/{LABELS} in {path}; is it Lake et al.'s all_runs.zip?")
        return [_read_run(archive, names, lf, image_size, channels, invert) for lf in label_files]
    finally:
        archive.close()
