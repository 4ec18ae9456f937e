"""Macro precision, recall and F1 of test episodes, and per-class reports (precision, recall, F1,
support, confusion matrix), from confusion matrices counted with ``torch.bincount``.

Why not a library here: these are the usual definitions (macro = the unweighted mean of the
per-class scores over the classes that occur as a label or a prediction, F1 per class then
averaged, 0 where a ratio has nothing to divide, as scikit-learn's ``zero_division=0`` and
torchmetrics' defaults), a dozen lines of counting.  torchmetrics, which computed them before, costs
about 3 s of CPU to import (it loads its audio, image and plotting modules, scipy.signal and
matplotlib with them) in every ``metafsl train`` and ``test`` process and in every worker of a
distributed evaluation; scikit-learn needs a Python call per episode (over a second for 600).
tests/test_per_class.py checks these functions against torchmetrics' (the dev dependency) on
random predictions with absent and never-predicted classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

#: the macro scores of a test, in this order (record keys ``macro_<name>`` and ``macro_<name>_ci95``)
MACRO = ("precision", "recall", "f1")


def confusion_matrices(predicted: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(E, k, k) counts, one matrix per row of ``predicted`` / ``labels`` (E, N) with ids 0..k-1
    (matrix rows: the true class, columns: the predicted one)."""
    episodes = predicted.shape[0]
    cell = labels * k + predicted + torch.arange(episodes).unsqueeze(1) * (k * k)
    return torch.bincount(cell.flatten(), minlength=episodes * k * k).view(episodes, k, k)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def per_class_scores(confusion: torch.Tensor) -> Dict[str, torch.Tensor]:
    """{precision, recall, f1}: (..., k) fractions of each class from (..., k, k) confusion matrices."""
    tp = confusion.diagonal(dim1=-2, dim2=-1).double()
    predicted, support = confusion.sum(-2).double(), confusion.sum(-1).double()
    return {"precision": _ratio(tp, predicted), "recall": _ratio(tp, support),
            "f1": _ratio(2 * tp, predicted + support)}


def macro_per_episode(predicted: torch.Tensor, labels: torch.Tensor, n_way: int) -> Dict[str, torch.Tensor]:
    """{precision, recall, f1}: (E,) fractions, each episode's macro average over its ``n_way``
    classes (those that occur as a label or a prediction), from its query predictions and
    labels (E, Nq), both 0..n_way-1."""
    confusion = confusion_matrices(predicted.long().cpu(), labels.long().cpu(), n_way)
    occurs = ((confusion.sum(-2) + confusion.sum(-1)) > 0).double()
    return {name: ((score * occurs).sum(-1) / occurs.sum(-1).clamp(min=1)).float()
            for name, score in per_class_scores(confusion).items()}


@dataclass
class ClassReport:
    """Per-class scores over a set of predictions: precision, recall and F1 in percent, support
    (true examples of the class), and the confusion matrix (rows: true class, columns: predicted)."""

    names: List[str]
    precision: List[float]
    recall: List[float]
    f1: List[float]
    support: List[int]
    confusion: List[List[int]]

    @property
    def total(self) -> int:
        return int(sum(self.support))

    def rows(self) -> List[List]:
        """[name, precision, recall, f1, support] per class (percent, 2 decimals)."""
        return [[n, round(p, 2), round(r, 2), round(f, 2), s]
                for n, p, r, f, s in zip(self.names, self.precision, self.recall, self.f1, self.support)]


def class_report(true: torch.Tensor, predicted: torch.Tensor, names: Sequence[str],
                 present_only: bool = False) -> ClassReport:
    """Per-class report of predictions ``predicted`` against ``true`` (class ids into ``names``);
    ``present_only``: only the classes that occur (the test classes an episode drew)."""
    true, predicted = true.long().flatten().cpu(), predicted.long().flatten().cpu()
    names = list(names)
    if present_only:
        present = torch.unique(torch.cat([true, predicted]))  # sorted: the split's class order
        names = [names[i] for i in present.tolist()]
        true, predicted = torch.searchsorted(present, true), torch.searchsorted(present, predicted)
    confusion = confusion_matrices(predicted.unsqueeze(0), true.unsqueeze(0), len(names))[0]
    scores = {name: (score * 100).tolist() for name, score in per_class_scores(confusion).items()}
    return ClassReport(names, scores["precision"], scores["recall"], scores["f1"],
                       confusion.sum(1).tolist(), confusion.tolist())


def class_report_of_names(true: Sequence[str], predicted: Sequence[str], names: Sequence[str]) -> ClassReport:
    """Per-class report of predictions given as class names (``metafsl predict`` on labelled
    queries); every one of ``names`` is a row, even one with no true example."""
    ids = {n: i for i, n in enumerate(names)}
    return class_report(torch.tensor([ids[n] for n in true]), torch.tensor([ids[n] for n in predicted]), names)
