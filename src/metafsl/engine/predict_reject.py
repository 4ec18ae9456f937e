"""The "unknown" answer of ``metafsl predict``: a threshold on the top class probability, given
(``predict.reject_below=<p>``) or calibrated on the support set (``predict.reject=auto``).

Calibration is leave-one-out: each support image in turn is held out, the learner is adapted to
the other support images (every class keeps at least one, so every class needs two) and the
held-out image is classified.  The threshold is the largest one that keeps ``KEEP`` (95%) of the
held-out images that were classified correctly: images scoring like the support set's own
correctly recognised images are answered, the rest are "unknown".  It costs one adaptation per
support image.  Each held-out image is scored alone: for the methods whose batch norm uses the
batch's statistics (MAML family, Reptile) that is not quite how queries are scored in batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch

from metafsl.engine.callbacks import Callback
from metafsl.errors import UserError

#: the fraction of correctly classified held-out support images the threshold keeps
KEEP = 0.95


@dataclass
class Calibration:
    """How ``predict.reject=auto`` chose its threshold."""

    threshold: float
    #: held-out support images, those classified correctly, and how many of each the threshold keeps
    held_out: int
    correct: int
    correct_kept: int
    wrong_rejected: int
    keep: float = KEEP

    def describe(self) -> str:
        """e.g. "threshold 0.41, chosen by leave-one-out on the 10 support images: the largest that
        keeps at least 95% of the 8 classified correctly when held out (it keeps 8); it rejects 1
        of the 2 misclassified" """
        wrong = self.held_out - self.correct
        tail = f"; it rejects {self.wrong_rejected} of the {wrong} misclassified" if wrong else ""
        return (f"threshold {self.threshold:.6g}, chosen by leave-one-out on the {self.held_out} support images: "
                f"the largest that keeps at least {self.keep:.0%} of the {self.correct} classified correctly "
                f"when held out (it keeps {self.correct_kept}){tail}")


def check_calibration_possible(names: List[str], counts: List[int]) -> None:
    """One sentence when a class has a single support image (nothing left once it is held out)."""
    single = [n for n, c in zip(names, counts) if c < 2]
    if single:
        raise UserError(f"predict.reject=auto needs at least 2 support images in every class to leave one out "
                        f"(class{'es' if len(single) > 1 else ''} {', '.join(repr(s) for s in single)} "
                        f"{'have' if len(single) > 1 else 'has'} 1); add images or give predict.reject_below=<p>.")


def threshold_keeping(correct_probs: List[float], keep: float = KEEP) -> float:
    """The largest t with at least ``keep`` of ``correct_probs`` >= t."""
    ordered = sorted(correct_probs, reverse=True)
    n_keep = max(1, math.ceil(keep * len(ordered) - 1e-9))
    return ordered[n_keep - 1]


def calibrate(algo, support_x: torch.Tensor, labels: torch.Tensor, n_way: int,
              callbacks: Optional[Callback] = None, keep: float = KEEP) -> Calibration:
    """Leave-one-out over the support set (see the module docstring)."""
    top: List[float] = []
    right: List[bool] = []
    n = len(labels)
    if callbacks is not None:
        callbacks.on_eval_start("calibrate (leave-one-out)", n)
    try:
        for i in range(n):
            others = torch.arange(n, device=labels.device) != i
            probs = algo.adapt(support_x[others], labels[others], n_way)(support_x[i:i + 1]).float().softmax(-1)[0]
            p, k = probs.max(-1)
            top.append(float(p))
            right.append(int(k) == int(labels[i]))
            if callbacks is not None:
                callbacks.on_eval_advance(1)
    finally:
        if callbacks is not None:
            callbacks.on_eval_end()
    return _choose(top, right, keep)


def _choose(top: List[float], right: List[bool], keep: float) -> Calibration:
    correct = [p for p, r in zip(top, right) if r]
    if not correct:
        raise UserError(f"predict.reject=auto cannot choose a threshold: none of the {len(top)} support images "
                        "was classified correctly when held out; give predict.reject_below=<p>.")
    t = threshold_keeping(correct, keep)
    wrong = [p for p, r in zip(top, right) if not r]
    return Calibration(t, len(top), len(correct), sum(p >= t for p in correct), sum(p < t for p in wrong), keep)

