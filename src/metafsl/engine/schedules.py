"""Learning-rate schedules not built into torch, usable from YAML via ``LambdaLR``.

    scheduler:
      _target_: torch.optim.lr_scheduler.LambdaLR
      _partial_: true
      lr_lambda: {_target_: metafsl.engine.schedules.PiecewiseConstant,
                  milestones: [20000, 40000, 50000], factors: [1.0, 0.06, 0.012, 0.0024]}

(MetaOptNet, Lee et al. 2019: lr 0.1, then 0.006, 0.0012, 0.00024 at epochs 20, 40, 50.)
"""
from __future__ import annotations

import bisect
from typing import Sequence

from metafsl.errors import UserError


class PiecewiseConstant:
    """Multiplier ``factors[i]`` for steps in ``[milestones[i-1], milestones[i])``."""

    def __init__(self, milestones: Sequence[int], factors: Sequence[float]):
        self.milestones = [int(m) for m in milestones]
        self.factors = [float(f) for f in factors]
        if len(self.factors) != len(self.milestones) + 1:
            raise UserError("PiecewiseConstant needs one more factor than milestones "
                            f"(got {len(self.factors)} factors for {len(self.milestones)} milestones).")
        if self.milestones != sorted(self.milestones):
            raise UserError(f"PiecewiseConstant milestones must increase (got {self.milestones}).")

    def __call__(self, step: int) -> float:
        return self.factors[bisect.bisect_right(self.milestones, step)]
