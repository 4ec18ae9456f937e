"""Checks of a run's episodes against its data and its learner, made before any training or
testing (the recipe raises the first problem; ``metafsl validate`` lists them all)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from metafsl.data.base import FewShotDataset
from metafsl.data.sampler import EpisodeSampler
from metafsl.errors import UserError


def has_validation(dataset: FewShotDataset, cfg: Dict[str, Any]) -> bool:
    """Whether the run validates: a val split and trainer.val_episodes > 0."""
    return "val" in dataset.splits and cfg["trainer"]["val_episodes"] > 0


def problems_of(*checks: Callable[[], Any]) -> List[str]:
    """The sentence of each check that raises a UserError, in order."""
    found = []
    for check in checks:
        try:
            check()
        except UserError as exc:
            found.append(str(exc))
    return found


def episode_problems(algorithm, dataset: FewShotDataset, cfg: Dict[str, Any],
                     splits: Optional[Sequence[str]] = None) -> List[str]:
    """The learner against the training and test ways; the test episodes against ``splits``
    (default: the validation and test splits a training uses) for classes, images per class and
    within-alphabet groups."""
    ep = cfg["episode"]
    test, within = ep["test"], bool(ep.get("within_alphabet", False))
    if splits is None:
        splits = ("val", "test") if has_validation(dataset, cfg) else ("test",)
    missing = [s for s in splits if s not in dataset.splits]
    if missing:
        return [f"Dataset '{dataset.name}' has no '{missing[0]}' split."]
    return problems_of(
        lambda: algorithm.check_episode(ep["train"]["n_way"], train=True),
        lambda: algorithm.check_episode(test["n_way"], train=False),
        *[lambda split=split: EpisodeSampler(dataset[split], test["n_way"], test["n_shot"], test["n_query"],
                                             "cpu", within_group=within, split_name=split)
          for split in splits])


def check_episodes(algorithm, dataset: FewShotDataset, cfg: Dict[str, Any]) -> None:
    """Fail now, not at the first validation or the final test, if episodes are impossible."""
    problems = episode_problems(algorithm, dataset, cfg)
    if problems:
        raise UserError(problems[0])
