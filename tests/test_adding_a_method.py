"""CONTRIBUTING.md, "Adding a method": a learner written against the contract alone (``fit`` and
``meta_loss``, or a metric learner's ``logits_from_embeddings``) trains, evaluates, predicts
and gets the fast evaluation path without any change to the engine."""
from __future__ import annotations

import json

import torch
from PIL import Image
from torch import nn

from conftest import TINY
from metafsl.algorithms.base import Algorithm, Classifier, accuracy
from metafsl.algorithms.metric import MetricLearner
from metafsl.data import glyphs
from metafsl.data.sampler import EpisodeSampler, Preprocess
from metafsl.engine import fast_eval


def centroid_logits(query: torch.Tensor, centroids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return -scale * torch.cdist(query, centroids) ** 2


class NearestCentroid(Algorithm):
    """Nearest class mean of raw preprocess, with a learned temperature: the whole contract is
    ``fit`` (one task's classifier) and ``meta_loss`` (training)."""

    def __init__(self, backbone: nn.Module):
        super().__init__(backbone)
        self.scale = nn.Parameter(torch.tensor(0.01))

    def fit(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Classifier:
        flat = support_x.flatten(1)
        centroids = torch.stack([flat[support_y == k].mean(0) for k in range(n_way)])
        return lambda query_x: centroid_logits(query_x.flatten(1), centroids, self.scale)

    def meta_loss(self, batch):
        logits = torch.stack([self.fit(batch.support_x[i], batch.support_y[i], batch.n_way)(batch.query_x[i])
                              for i in range(len(batch))])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, accuracy(logits.detach(), batch.query_y).mean()


class MetricCentroid(MetricLearner):
    """The same rule as a metric learner: only ``logits_from_embeddings`` to write."""

    def __init__(self):
        super().__init__(nn.Flatten())
        self.scale = nn.Parameter(torch.tensor(0.01))

    def logits_from_embeddings(self, support, support_y, query, n_way):
        onehot = nn.functional.one_hot(support_y, n_way).to(support.dtype)
        centroids = (onehot.transpose(1, 2) @ support) / onehot.sum(1).unsqueeze(-1)
        return centroid_logits(query, centroids, self.scale)


def test_a_new_method_trains_evaluates_and_predicts_through_the_contract():
    split = glyphs.generate(n_classes=30, examples_per_class=6, image_size=16, seed=3)["test"]
    sampler = EpisodeSampler(split, 3, 2, 2, seed=0, preprocess=Preprocess())
    toy = NearestCentroid(nn.Identity())
    opt, before = torch.optim.SGD(toy.parameters(), lr=1e-3), toy.scale.item()
    for _ in range(3):  # what the training loop does
        opt.zero_grad()
        toy.meta_backward(sampler.sample(4, train=True))
        opt.step()
    assert toy.scale.item() != before  # the meta-gradient reached the learned temperature
    toy.eval()
    batch = EpisodeSampler(split, 3, 2, 2, seed=1, preprocess=Preprocess()).sample(20)
    acc = toy.evaluate(batch)  # what evaluation (validation, test, lake20) does
    assert acc.shape == (20,) and float(acc.mean()) > 0.5  # far above chance (1/3) on glyphs
    probs = toy.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0]).softmax(-1)  # metafsl predict
    assert probs.shape == (6, 3) and torch.allclose(probs.sum(-1), torch.ones(6))
    assert toy.check_episode(20, train=False) is None  # no fixed head: any number of classes


def test_a_new_metric_learner_gets_the_fast_evaluation_path():
    split = glyphs.generate(n_classes=30, examples_per_class=6, image_size=16, seed=3)["test"]
    metric, plain = MetricCentroid().eval(), NearestCentroid(nn.Identity()).eval()
    assert fast_eval.supported(metric) and not fast_eval.supported(plain)
    fast = fast_eval.episode_accuracies(metric, EpisodeSampler(split, 3, 2, 2, seed=2, preprocess=Preprocess()),
                                        split.images, episodes=20, max_images=50, episodes_per_step=8)
    batch = EpisodeSampler(split, 3, 2, 2, seed=2, preprocess=Preprocess()).sample(20)
    torch.testing.assert_close(fast, plain.evaluate(batch))  # same rule, same episodes, same accuracies
    torch.testing.assert_close(fast, metric.evaluate(batch))


def test_a_new_method_named_only_in_its_config_runs_through_the_cli(run_cli, tmp_path):
    """No registry: the config node's ``_target_`` is the method. Train, validate, test and
    predict run the toy learner through the real commands."""
    run = tmp_path / "run"
    code, out, err = run_cli("train", *TINY, "algo=protonet", "algo.name=nearest_centroid",
                             f"algo._target_={__name__}.NearestCentroid", "~algo.distance", "~algo.temperature",
                             "~algo.metric_scale", "~algo.scale_init",
                             "backbone.hidden=8", f"hydra.run.dir={run}")
    assert code == 0, err + out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["acc"] > 40  # nearest centroid of pixels on 5-way glyphs: far above chance
    split = glyphs.generate(n_classes=20, examples_per_class=3, image_size=28, seed=5)["test"]
    for k in range(3):
        idx = torch.nonzero(split.labels == k).flatten().tolist()
        (tmp_path / "support" / f"c{k}").mkdir(parents=True)
        (tmp_path / "query").mkdir(exist_ok=True)
        for j in idx[:2]:
            Image.fromarray(split.images[j, 0].numpy()).save(tmp_path / "support" / f"c{k}" / f"{j}.png")
        Image.fromarray(split.images[idx[2], 0].numpy()).save(tmp_path / "query" / f"q{k}.png")
    code, out, err = run_cli("predict", f"run={run}", f"support={tmp_path / 'support'}",
                             f"query={tmp_path / 'query'}", f"out={tmp_path / 'pred.csv'}")
    assert code == 0, err
    rows = (tmp_path / "pred.csv").read_text().splitlines()
    assert rows[0] == ("file,predicted,probability,top1,top1_probability,top2,top2_probability,top3,"
                       "top3_probability,p_c0,p_c1,p_c2,error") and len(rows) == 4
