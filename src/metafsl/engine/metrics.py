"""Macro precision, recall and F1 of test episodes, and per-class reports (precision, recall, F1,
support, confusion matrix), computed with torchmetrics.

Why torchmetrics (not scikit-learn, not hand-written formulas): it is a maintained library of
the PyTorch ecosystem (Lightning) with the usual definitions (macro = the unweighted mean of the
per-class scores, F1 per class then averaged, a class never predicted has precision 0 as
scikit-learn's ``zero_division=0``), it works on the prediction tensors as they are, and its
functional metrics score a whole batch of episodes in one vectorised call
(``multidim_average="samplewise"``: one score per episode): about 25 ms for 600 episodes, where
a scikit-learn call per episode takes over a second.  Its import (~0.6 s on top of what a test
already loads: matplotlib, scipy.signal) is paid once, when a test is scored, never by
``--help``, training steps or validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

#: the macro scores of a test, in this order (record keys ``macro_<name>`` and ``macro_<name>_ci95``)
MACRO = ("precision", "recall", "f1")


def _functional():
    from torchmetrics.functional.classification import (
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    return {"precision": multiclass_precision, "recall": multiclass_recall, "f1": multiclass_f1_score,
            "confusion": multiclass_confusion_matrix}


def macro_per_episode(predicted: torch.Tensor, labels: torch.Tensor, n_way: int) -> Dict[str, torch.Tensor]:
    """{precision, recall, f1}: (E,) fractions, each episode's macro average over its ``n_way``
    classes, from its query predictions and labels (E, Nq), both 0..n_way-1."""
    fn = _functional()
    predicted, labels = predicted.long().cpu(), labels.long().cpu()
    return {name: fn[name](predicted, labels, num_classes=n_way, average="macro",
                           multidim_average="samplewise", validate_args=False).float()
            for name in MACRO}


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
    k = len(names)
    fn = _functional()
    scores = {name: (fn[name](predicted, true, num_classes=k, average="none") * 100).tolist() for name in MACRO}
    confusion = fn["confusion"](predicted, true, num_classes=k)
    return ClassReport(names, scores["precision"], scores["recall"], scores["f1"],
                       confusion.sum(1).tolist(), confusion.tolist())


def class_report_of_names(true: Sequence[str], predicted: Sequence[str], names: Sequence[str]) -> ClassReport:
    """Per-class report of predictions given as class names (``metafsl predict`` on labelled
    queries); every one of ``names`` is a row, even one with no true example."""
    ids = {n: i for i, n in enumerate(names)}
    return class_report(torch.tensor([ids[n] for n in true]), torch.tensor([ids[n] for n in predicted]), names)
