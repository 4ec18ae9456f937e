"""Evaluation shortcut for metric methods (embed each distinct image once) and runtime options."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY
from metafsl.algorithms.maml import MAML
from metafsl.algorithms.metric import MetricLearner
from metafsl.algorithms.protonet import ProtoNet, prototypes, sq_euclidean_logits
from metafsl.data.base import FewShotSplit
from metafsl.data.sampler import EpisodeSampler
from metafsl.engine import fast_eval, runtime
from metafsl.engine.evaluate import EvalSpec, evaluate
from metafsl.errors import UserError
from metafsl.models import build_backbone


def random_split(classes=12, per_class=6, size=16) -> FewShotSplit:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 1, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return FewShotSplit(images, labels, [f"c{i}" for i in range(classes)])


def protonet(size=16) -> ProtoNet:
    torch.manual_seed(0)
    algo = ProtoNet(build_backbone("conv4", 1, size, hidden=8, layers=3))
    with torch.no_grad():  # non-trivial running statistics
        algo.train()
        for _ in range(3):
            algo.backbone(torch.rand(32, 1, size, size) * 2)
    return algo


def test_embedding_shortcut_gives_the_same_accuracies(monkeypatch):
    split, algo = random_split(), protonet()
    fast = evaluate(algo, split, EvalSpec(4, 1, 3, episodes=40, seed=7, batch_episodes=3), device="cpu")
    assert fast_eval.supported(algo)
    monkeypatch.setattr(fast_eval, "supported", lambda a: False)
    slow = evaluate(algo, split, EvalSpec(4, 1, 3, episodes=40, seed=7, batch_episodes=3), device="cpu")
    assert fast["episodes"] == slow["episodes"] == 40
    assert fast["acc"] == pytest.approx(slow["acc"], abs=1e-9)
    assert fast["ci95"] == pytest.approx(slow["ci95"], abs=1e-9)
    assert 0 < slow["acc"] < 100 and slow["ci95"] > 0  # a meaningful comparison


def test_embedding_shortcut_per_episode_matches_the_episode_loop():
    split, algo = random_split(), protonet()
    algo.eval()
    fast = fast_eval.episode_accuracies(algo, EpisodeSampler(split, 3, 2, 2, seed=3), split.images,
                                        episodes=10, max_images=7, episodes_per_step=4)
    with torch.no_grad():
        slow = algo.evaluate(EpisodeSampler(split, 3, 2, 2, seed=3).sample(10))
    torch.testing.assert_close(fast, slow)
    assert algo.backbone[1].conv.weight.is_contiguous()  # weights put back as they were


def test_shortcut_applies_only_where_faithful():
    assert fast_eval.supported(protonet())
    torch.manual_seed(0)
    maml = MAML(build_backbone("conv4", 1, 16, hidden=4, layers=2), 3)
    assert not fast_eval.supported(maml)  # needs gradients at test, batch statistics

    class Farthest(MetricLearner):  # any metric learner's own rule is what the shortcut applies
        def logits_from_embeddings(self, support, support_y, query, n_way):
            return -sq_euclidean_logits(query, prototypes(support, support_y, n_way))

    farthest, split = Farthest(protonet().backbone).eval(), random_split()
    assert fast_eval.supported(farthest)
    fast = fast_eval.episode_accuracies(farthest, EpisodeSampler(split, 3, 2, 2, seed=3), split.images,
                                        episodes=10, max_images=7, episodes_per_step=4)
    torch.testing.assert_close(fast, farthest.evaluate(EpisodeSampler(split, 3, 2, 2, seed=3).sample(10)))
    batch_stats = protonet()
    for m in batch_stats.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean = m.running_var = None
    assert not fast_eval.supported(batch_stats)


def test_runtime_options_are_no_ops_on_cpu():
    rt = runtime.from_config({"runtime": {"amp": "bf16", "channels_last": True, "compile": True}},
                             torch.device("cpu"))
    algo = protonet().eval()
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    rt.prepare(algo)
    with rt.autocast():
        y = algo.backbone(torch.rand(2, 1, 16, 16))
    assert y.dtype == torch.float32
    assert algo.backbone[0].conv.weight.is_contiguous()
    assert all(torch.equal(before[k], v) for k, v in algo.state_dict().items())
    # older run configs have no runtime node: defaults
    assert runtime.from_config({}, torch.device("cpu")).amp == "off"


def test_runtime_rejects_unknown_amp():
    with pytest.raises(UserError, match="off, bf16"):
        runtime.from_config({"runtime": {"amp": "fp8"}}, torch.device("cpu"))


def test_allocator_tuning_is_idempotent():
    first = runtime.tune_cpu_allocator()
    assert runtime.tune_cpu_allocator() == first


def test_gpu_flags_leave_a_cpu_run_unchanged(run_cli, tmp_path):
    results = []
    for name, extra in (("plain", []), ("flags", ["runtime.amp=bf16", "runtime.channels_last=true",
                                                  "runtime.compile=true"])):
        code, _, err = run_cli("train", *TINY, "device=cpu", *extra, f"hydra.run.dir={tmp_path / name}")
        assert code == 0, err
        results.append(json.loads((tmp_path / name / "summary.json").read_text()))
    assert results[0]["test"]["acc"] == results[1]["test"]["acc"]
    assert results[0]["val"] == results[1]["val"]


def test_cpu_embedding_passes_are_bounded_by_activation_memory():
    from metafsl.engine.fast_eval import CPU_IMAGES_PER_PASS, images_per_pass

    small = build_backbone("conv4", 1, 28, hidden=8, layers=2)
    one = torch.zeros(1, 1, 28, 28)
    assert images_per_pass(small, one) == CPU_IMAGES_PER_PASS  # tiny model: the cap applies
    # 8x28x28 floats per conv output: the budget, not the cap, sets the pass size
    n = images_per_pass(small, one, budget=1 << 20)
    assert 1 <= n < 100
    assert images_per_pass(small, one, budget=1) == 1
