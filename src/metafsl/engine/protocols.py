"""Test protocols other than sampled episodes.

``lake20``: Lake, Salakhutdinov & Tenenbaum (2015), "Human-level concept learning through
probabilistic program induction", one-shot classification: 20 runs of 20 trials; in each
trial a new drawing is matched to one of 20 characters seen once.  Reported as the error
rate in percent over all trials (and per run); published: humans 4.5%, BPL 3.3%,
a ConvNet 13.5%, a Siamese net (Koch et al. 2015) 8.0%.

The 95% interval of the error counts the run as the unit: a run's 20 trials share one alphabet
and one pair of drawers, so they are not independent trials (on the stand-in of
``scripts/make_lake_standin.py`` the spread over runs gives +-6 to 8 points, where 400
independent trials would give +-4).  Two models tested on the same runs are compared run by
run (``paired_difference``), which cancels the runs' shared difficulty.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import torch

from metafsl.algorithms.test_time import check_finetune, finetuned
from metafsl.data.augment import mean_over_turns
from metafsl.data.lake_runs import read_runs
from metafsl.engine.episode_adapt import seeded
from metafsl.engine.evaluate import EvalSpec, mean_ci95, tta_refusal
from metafsl.engine.fast_eval import embed_views
from metafsl.errors import UserError

#: one model of an ensemble: (algorithm, its reading of the runs, its preprocess, its device)
Member = Tuple[Any, list, Any, Any]

PROTOCOLS = {"lake20": "Lake et al. 2015 one-shot classification runs (20 x 20 trials, error %)"}


@dataclass(frozen=True)
class RunAdaptation:
    """Test-time fine-tuning on each run's 20 drawings (``eval.finetune_*``), undone after the
    run; the views of run ``i`` are drawn from a generator seeded with ``seed + i`` (and the global
    generators are seeded alike inside, for augmentations that draw from them)."""

    steps: int = 0
    lr: float = 0.001
    views: str = "flip_shift"
    seed: int = 0

    @classmethod
    def from_spec(cls, spec: EvalSpec) -> "RunAdaptation":
        """The fine-tuning a test spec asks for (``EvalSpec.from_config`` reads ``eval.finetune_*``)."""
        return cls(spec.finetune_steps, spec.finetune_lr, spec.finetune_views, spec.seed)

    def record(self) -> Dict[str, Any]:
        return {"finetune": {"steps": self.steps, "lr": self.lr, "views": self.views}} if self.steps else {}


def lake_root(proto: Dict[str, Any], data_dir: str) -> Path:
    root = proto.get("root") or os.path.join(data_dir, "omniglot", "all_runs.zip")
    return Path(os.path.expanduser(str(root)))


def run_logits(algorithm, task, tta: int = 1) -> torch.Tensor:
    """(1, trials, 20) query logits of one run; ``tta`` > 1: the backbone's embeddings (a metric
    learner's or a transfer baseline's) averaged over that many fixed views
    (``fast_eval.embed_views``), as ``eval.tta`` does for episodes."""
    if tta <= 1:
        return algorithm.episode_logits(task).detach()
    if not hasattr(algorithm, "logits_from_embeddings"):
        raise tta_refusal(tta, type(algorithm).__name__)
    with torch.no_grad():
        support = embed_views(algorithm.backbone, task.support_x[0], tta).unsqueeze(0)
        query = embed_views(algorithm.backbone, task.query_x[0], tta).unsqueeze(0)
        return algorithm.logits_from_embeddings(support, task.support_y, query, task.n_way)


def run_probabilities(algorithm, task, tta: int = 1, rotations: int = 1) -> torch.Tensor:
    """(1, trials, 20) class probabilities of one run (``run_logits``); ``rotations`` > 1: averaged
    over the run turned as ``eval.tta_rotations`` says (its 20 drawings and trials turned alike)."""
    return mean_over_turns(partial(run_logits, algorithm, tta=tta), task, rotations).cpu()


def run_accuracy(algorithm, task, tta: int = 1, rotations: int = 1) -> float:
    """Fraction of one run's trials right: by ``run_logits``, or with ``rotations`` > 1 by
    ``run_probabilities`` (a softmax can round logits apart by 1e-7 to a tie; one turn keeps them)."""
    scores = run_logits(algorithm, task, tta) if rotations <= 1 else run_probabilities(algorithm, task, tta, rotations)
    return float((scores.argmax(-1).cpu() == task.query_y.cpu()).float().mean())


def _probabilities(members: Sequence[Member], i: int, tta: int, adapt: RunAdaptation = RunAdaptation(),
                   rotations: int = 1):
    """Run ``i``'s task (as the first member reads it) and the members' mean class probabilities,
    each member fine-tuned on the run's drawings first where ``adapt`` asks for it (``rotations``:
    ``run_probabilities``)."""
    probs, first = [], None
    for algorithm, runs, preprocess, device in members:
        task = runs[i].task(preprocess, device)
        algorithm.check_episode(task.n_way, train=False)
        views = preprocess.finetune_views(adapt.views) if adapt.steps else None
        gen = torch.Generator().manual_seed(adapt.seed + i)
        with seeded(adapt.seed + i, task.support_x.device), \
                finetuned(algorithm, task.support_x[0], task.support_y[0], task.n_way, adapt.steps, adapt.lr, gen, views):
            probs.append(run_probabilities(algorithm, task, tta, rotations))
        first = task if first is None else first
    return first, torch.stack(probs).mean(0)


def score_runs(algorithm, runs, preprocess, device, tta: int = 1, others: Sequence[Member] = (),
               adapt: RunAdaptation = RunAdaptation(), rotations: int = 1) -> Dict[str, Any]:
    """Error rates (percent) of ``algorithm`` on Lake runs: overall and per run (``tta``:
    ``run_logits``); ``others``: more models (algorithm, their reading of the same runs,
    preprocess, device) whose class probabilities are averaged with its own (an ensemble);
    ``adapt``: each model fine-tuned on each run's drawings before it classifies the run's trials;
    ``rotations``: each model's probabilities averaged over the run's turns (``run_probabilities``)."""
    members = [(algorithm, runs, preprocess, device), *others]
    modes = [m[0].training for m in members]
    for m in members:
        m[0].eval()
    per_run, wrong, trials = {}, 0.0, 0
    try:
        for i, run in enumerate(runs):
            task, probs = _probabilities(members, i, tta, adapt, rotations)
            acc = float((probs.argmax(-1) == task.query_y.cpu()).float().mean())  # fraction of this run's trials
            n = task.query_y.shape[1]
            per_run[run.name] = round(100.0 * (1.0 - acc), 2)
            wrong += (1.0 - acc) * n
            trials += n
    finally:
        for m, mode in zip(members, modes):
            m[0].train(mode)
    error = 100.0 * wrong / max(trials, 1)
    return {"error": round(error, 3), "acc": round(100.0 - error, 3), "ci95": round(runs_ci95(per_run), 3), "trials": trials,
            "runs": len(runs), "per_run_error": per_run}


def runs_ci95(per_run_error: Dict[str, float]) -> float:
    """95% half-width of the error over runs (the run as the unit; the module docstring)."""
    if not per_run_error:
        return 0.0
    return mean_ci95(torch.tensor(list(per_run_error.values()), dtype=torch.float64))["ci95"]


def paired_difference(a: Dict[str, float], b: Dict[str, float]) -> Dict[str, float]:
    """Error of ``b`` minus error of ``a`` (percent points; two records' ``per_run_error``), run by
    run: the mean difference and its 95% half-width over the runs both tested."""
    common = [name for name in a if name in b]
    if not common:
        raise UserError("The two lake20 records share no run; test both models on the same runs.")
    diffs = torch.tensor([b[n] - a[n] for n in common], dtype=torch.float64)
    stats = mean_ci95(diffs)
    return {"difference": round(stats["acc"], 3), "ci95": round(stats["ci95"], 3), "runs": len(common)}


def run_protocol(proto: Dict[str, Any], parts, cfg: Dict[str, Any], ensemble: Sequence = ()) -> Dict[str, Any]:
    """The protocol's scores of the tested model (``parts``: ``engine.components.Components``),
    with the models of ``ensemble`` (more such parts, ``protocol.ensemble``) voting alongside."""
    name = proto.get("name")
    if name != "lake20":
        raise UserError(f"Unknown protocol '{name}'; choose one of: {', '.join(PROTOCOLS)}.")
    root = lake_root(proto, cfg["paths"]["data_dir"])
    def read(p):  # each model sees the runs at its own image size
        return read_runs(root, p.dataset.image_size, p.dataset.channels, proto.get("invert", True))

    spec = EvalSpec.from_config(cfg)
    adapt, rotations = RunAdaptation.from_spec(spec), spec.tta_rotations
    for p in [parts, *ensemble]:
        check_finetune(p.algorithm, adapt.steps, type(p.algorithm).__name__)
        if adapt.steps:
            p.preprocess.finetune_views(adapt.views)  # one sentence before any work
    others = [(p.algorithm, read(p), p.preprocess, p.device) for p in ensemble]
    tta = spec.tta
    res = score_runs(parts.algorithm, read(parts), parts.preprocess, parts.device, tta, others, adapt, rotations)
    extra = {**({"tta": tta} if tta > 1 else {}), **({"tta_rotations": rotations} if rotations > 1 else {}),
             **({"ensemble": list(proto["ensemble"])} if ensemble else {}),
             **adapt.record()}
    return {"protocol": name, "root": str(root), **res, **extra}
