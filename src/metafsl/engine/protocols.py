"""Test protocols other than sampled episodes.

``lake20``: Lake, Salakhutdinov & Tenenbaum (2015), "Human-level concept learning through
probabilistic program induction", one-shot classification: 20 runs of 20 trials; in each
trial a new drawing is matched to one of 20 characters seen once.  Reported as the error
rate in percent over all trials (and per run); published: humans 4.5%, BPL 3.3%,
a ConvNet 13.5%, a Siamese net (Koch et al. 2015) 8.0%.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import torch

from metafsl.data.lake_runs import read_runs
from metafsl.engine.fast_eval import embed_views
from metafsl.errors import UserError

PROTOCOLS = {"lake20": "Lake et al. 2015 one-shot classification runs (20 x 20 trials, error %)"}


def lake_root(proto: Dict[str, Any], data_dir: str) -> Path:
    root = proto.get("root") or os.path.join(data_dir, "omniglot", "all_runs.zip")
    return Path(os.path.expanduser(str(root)))


def run_accuracy(algorithm, task, tta: int = 1) -> float:
    """Fraction of one run's trials right; ``tta`` > 1: a metric learner's embeddings averaged
    over that many fixed views (``fast_eval.embed_views``), as ``eval.tta`` does for episodes."""
    if tta <= 1:
        return float(algorithm.evaluate(task).float().cpu()[0])
    with torch.inference_mode():
        support = embed_views(algorithm.embed, task.support_x[0], tta).unsqueeze(0)
        query = embed_views(algorithm.embed, task.query_x[0], tta).unsqueeze(0)
        logits = algorithm.logits_from_embeddings(support, task.support_y, query, task.n_way)
    return float((logits.argmax(-1) == task.query_y).float().mean().cpu())


def score_runs(algorithm, runs, preprocess, device, tta: int = 1) -> Dict[str, Any]:
    """Error rates (percent) of ``algorithm`` on Lake runs: overall and per run (``tta``: ``run_accuracy``)."""
    was_training = algorithm.training
    algorithm.eval()
    per_run, wrong, trials = {}, 0.0, 0
    try:
        for run in runs:
            task = run.task(preprocess, device)
            algorithm.check_episode(task.n_way, train=False)
            acc = run_accuracy(algorithm, task, tta)  # fraction of this run's trials
            n = task.query_y.shape[1]
            per_run[run.name] = round(100.0 * (1.0 - acc), 2)
            wrong += (1.0 - acc) * n
            trials += n
    finally:
        algorithm.train(was_training)
    error = 100.0 * wrong / max(trials, 1)
    return {"error": round(error, 3), "acc": round(100.0 - error, 3), "trials": trials, "runs": len(runs),
            "per_run_error": per_run}


def run_protocol(proto: Dict[str, Any], parts, cfg: Dict[str, Any]) -> Dict[str, Any]:
    name = proto.get("name")
    if name != "lake20":
        raise UserError(f"Unknown protocol '{name}'; choose one of: {', '.join(PROTOCOLS)}.")
    root = lake_root(proto, cfg["paths"]["data_dir"])
    runs = read_runs(root, parts.dataset.image_size, parts.dataset.channels, proto.get("invert", True))
    tta = int((cfg.get("eval") or {}).get("tta", 1) or 1)
    res = score_runs(parts.algorithm, runs, parts.preprocess, parts.device, tta)  # evaluate() sets grad mode
    return {"protocol": name, "root": str(root), **res, **({"tta": tta} if tta > 1 else {})}
