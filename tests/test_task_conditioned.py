"""Task-conditioned learners (TADAM, FEAT) and learned metric scaling: the math on tiny tensors,
and TADAM through the CLI (list, export of its learning run; train, test and predict are the
learning tests' runs, tests/test_learning.py)."""
from __future__ import annotations

import pytest
import torch

from metafsl.algorithms.feat import FEAT
from metafsl.algorithms.protonet import ProtoNet
from metafsl.algorithms.tadam import TADAM
from metafsl.data.base import FewShotSplit
from metafsl.data.sampler import EpisodeSampler
from metafsl.models import build_backbone


def support_set(n_way=3, shot=2, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_way).repeat_interleave(shot)
    return torch.rand(len(y), 1, size, size, generator=g), y, torch.rand(5, 1, size, size, generator=g)


def tadam(name="conv4", **kw):
    torch.manual_seed(0)
    extra = {"hidden": 6, "layers": 2} if name == "conv4" else {"wider": False}
    return TADAM(build_backbone(name, 1, 12 if name == "conv4" else 80, **extra), **kw).eval()


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_film_at_its_initialisation_leaves_the_backbone_unchanged(name):
    """(learn2learn's ResNet-12 average-pools a 5x5 map: 80x80 images at least)"""
    algo = tadam(name)
    b, size = (2, 12) if name == "conv4" else (1, 80)
    x = torch.rand(b, 3, 1, size, size)
    y = torch.tensor([[0, 1, 2]] * b)
    with torch.no_grad():
        params = algo.film(x, y, 3)
        plain = algo.backbone(x.flatten(0, 1)).view(b, 3, -1)
        torch.testing.assert_close(algo.embed_conditioned(x, params), plain, rtol=0, atol=0)
        algo.ten.gamma_scale.fill_(0.5)  # and the hooks do condition every layer once moved
        algo.ten.beta_scale.fill_(0.5)
        params = algo.film(x, y, 3)
        assert not torch.allclose(algo.embed_conditioned(x, params), plain, atol=1e-4)
        assert len(params) == (4 if name == "resnet12" else 2) * (4 if name == "resnet12" else 1)


def test_the_task_embedding_ignores_the_order_of_the_support_set():
    algo = tadam()
    with torch.no_grad():
        algo.ten.gamma_scale.fill_(0.5)
        algo.ten.beta_scale.fill_(0.5)
    sx, sy, qx = support_set()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(algo.task_embedding(sx, sy), algo.task_embedding(sx[perm], sy[perm]))
    assert algo.task_embedding(sx, sy).shape == (algo.backbone.out_features,)
    torch.testing.assert_close(algo.adapt(sx, sy)(qx), algo.adapt(sx[perm], sy[perm])(qx))
    # each image's embedding depends on its task: no one-embedding-per-image fast evaluation
    from metafsl.engine import fast_eval

    assert not fast_eval.supported(algo) and fast_eval.supported(feat())


def test_metric_scaling_multiplies_the_logits():
    torch.manual_seed(0)
    backbone = build_backbone("conv4", 1, 12, hidden=6, layers=2)
    fixed = ProtoNet(backbone).eval()
    learned = ProtoNet(backbone, metric_scale="learned", scale_init=3.0).eval()
    assert "alpha" not in fixed.state_dict()  # fixed-scale checkpoints keep today's keys
    sx, sy, qx = support_set()
    torch.testing.assert_close(learned.adapt(sx, sy)(qx), 3.0 * fixed.adapt(sx, sy)(qx))
    algo = tadam()
    one = algo.adapt(sx, sy)(qx)
    with torch.no_grad():
        algo.alpha.fill_(2.5)
    torch.testing.assert_close(algo.adapt(sx, sy)(qx), 2.5 * one)


def feat(**kw):
    torch.manual_seed(0)
    return FEAT(build_backbone("conv4", 1, 12, hidden=6, layers=2), **kw).eval()


def test_feat_set_function_is_permutation_equivariant_over_prototypes():
    algo = feat()
    protos = torch.randn(2, 5, algo.backbone.out_features)
    perm = torch.tensor([2, 4, 0, 1, 3])
    with torch.no_grad():
        out = algo.adapted(protos)
        torch.testing.assert_close(algo.adapted(protos[:, perm]), out[:, perm])
    assert not torch.allclose(out, protos, atol=1e-3)  # it does adapt them


def test_feat_without_its_set_function_is_protonet():
    algo = feat(set_function="none", temperature=1.0)
    proto = ProtoNet(algo.backbone).eval()
    sx, sy, qx = support_set()
    torch.testing.assert_close(algo.adapt(sx, sy)(qx), proto.adapt(sx, sy)(qx))
    torch.testing.assert_close(feat(set_function="none", temperature=4.0).adapt(sx, sy)(qx),
                               proto.adapt(sx, sy)(qx) / 4)


def test_tadam_co_trains_a_many_way_head_on_the_episodes_training_classes():
    """The sampler says each episode label's class in the split; the head's loss uses it, with a
    weight that decays every ``aux_decay_every`` training steps."""
    g = torch.Generator().manual_seed(1)
    split = FewShotSplit(torch.randint(0, 255, (60, 1, 12, 12), generator=g, dtype=torch.uint8),
                         torch.arange(10).repeat_interleave(6), [str(i) for i in range(10)])
    batch = EpisodeSampler(split, 3, 2, 2, seed=0).sample(2, train=True)
    picked = batch.support_x.mul(255).round().to(torch.uint8)
    for b in range(2):  # the class of each support image is the one the batch names
        for i, y in enumerate(batch.support_y[b].tolist()):
            k = int(batch.classes[b, y])
            assert any(torch.equal(picked[b, i], im) for im in split.images[split.labels == k])
    algo = tadam(aux_weight=0.5, aux_decay=0.1, aux_decay_every=2).train()
    algo.prepare_training(split.n_classes)
    assert algo.classifier.out_features == 10
    loss_with, _ = algo.meta_loss(batch)
    torch.manual_seed(0)
    assert algo.aux_loss(batch, *algo.batch_logits(batch)[1:]) is not None
    batch.classes = None
    assert algo.aux_loss(batch, *algo.batch_logits(batch)[1:]) is None
    assert int(algo.step) == 1 and algo.aux_weight() == 0.5
    algo.meta_loss(batch)
    assert abs(algo.aux_weight() - 0.05) < 1e-9
    state = algo.state_dict()
    fresh = tadam()
    fresh.load_state_dict(state)  # the head is recreated from the checkpoint
    assert fresh.classifier.out_features == 10 and int(fresh.step) == 2


def test_list_algo_tadam_and_feat(run_cli):
    for name, words in (("tadam", ["aux_decay_every", "film_penalty", "Oreshkin"]),
                        ("feat", ["temperature2", "balance", "Ye"])):
        code, out, _ = run_cli("list", "algo", name)
        assert code == 0 and all(w in out for w in words), out


def test_tadam_learning_run_exports(run_cli, tmp_path, tmp_path_factory):
    """The TADAM learning run (trained and tested once per session by tests/test_learning.py,
    which also predicts with it) exports: the conditioned backbone with the task's FiLM
    parameters fixed."""
    from test_learning import easy_case, trained_run

    run = trained_run("tadam", run_cli, tmp_path_factory)
    root, _ = easy_case(tmp_path, 5)
    code, text, err = run_cli("export", f"run={run}", f"support={root / 'support'}")
    assert code == 0, err + text
    assert any((run / "exports").iterdir())
