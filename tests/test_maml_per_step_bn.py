"""MAML++'s per-step batch-norm weights and biases (``algo.per_step_bn``), on tiny tensors in float64:
the meta-loss and meta-gradient against a hand-written reference of the rule (the network that has
taken k inner steps normalises with set k, the sets stay out of the inner loop), checkpoints, the
standalone (exported) classifier and the refusals.  (The CLI train/kill/resume/test of such a run:
tests/test_resume.py's maml_plus_plus case.)"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.maml import MAML
from metafsl.algorithms.per_step_bn import PerStepBatchNorm
from metafsl.data.sampler import TaskBatch
from metafsl.errors import UserError

LR = 0.3


def net() -> nn.Module:
    """conv (2 filters) -> batch norm -> ReLU on 1x4x4 images: 32 features."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten()).double()
    model.out_features = 32
    return model


def learner(steps: int = 2, seed: int = 0, **options) -> MAML:
    torch.manual_seed(seed)
    backbone = net()
    with torch.no_grad():  # not BN's default 1 and 0: the sets must start from the layer's own values
        backbone[1].weight.uniform_(0.5, 1.5)
        backbone[1].bias.uniform_(-0.5, 0.5)
    return MAML(backbone, n_way=3, inner_lr=LR, inner_steps=steps, test_inner_steps=steps, per_step_bn=True,
                **options).double()


def episode(seed: int = 1) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(1, 6, 1, 4, 4, generator=g).double(), torch.randn(1, 6, 1, 4, 4, generator=g).double()
    y = torch.arange(3).repeat(2)[None]
    return TaskBatch(sx, y, qx, y, 3, 2, 2)


def reference_losses(p, sets_w, sets_b, batch: TaskBatch, steps: int, index=lambda k: k):
    """The query loss after each inner step, by hand: the network after k steps normalises with
    set ``index(k)``; conv and head weights take second-order steps, the sets none."""
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]

    def logits(q, k, x):
        h = F.batch_norm(F.conv2d(x, q[0], q[1], padding=1), None, None, sets_w[index(k)], sets_b[index(k)],
                         training=True)
        return F.linear(F.relu(h).flatten(1), q[2], q[3])

    losses = []
    for k in range(steps):
        grads = torch.autograd.grad(F.cross_entropy(logits(p, k, sx), sy), p, create_graph=True)
        p = [w - LR * g for w, g in zip(p, grads)]
        losses.append(F.cross_entropy(logits(p, k + 1, qx), qy))
    return losses


def weights(algo: MAML):
    """(conv weight, conv bias, head weight, head bias), BN weight rows, BN bias rows."""
    conv, bn = algo.backbone[0], algo.backbone[1]
    return [conv.weight, conv.bias, algo.head.weight, algo.head.bias], bn.weight, bn.bias


def test_equal_sets_give_maml_with_batch_norm_out_of_the_inner_loop():
    """Every set starts from the layer's weight and bias; so long as the sets are equal, the meta-loss
    and meta-gradient are those of one shared batch norm kept out of the inner loop (its gradient:
    the sum over the sets), and every set receives a meta-gradient of its own."""
    torch.manual_seed(0)
    plain = net()
    with torch.no_grad():
        plain[1].weight.uniform_(0.5, 1.5)
        plain[1].bias.uniform_(-0.5, 0.5)
    algo = learner()
    algo.backbone[0].load_state_dict(plain[0].state_dict())
    bn = algo.backbone[1]
    assert isinstance(bn, PerStepBatchNorm) and bn.weight.shape == (3, 2)  # inner_steps + 1 sets
    assert torch.equal(bn.weight, plain[1].weight.detach().expand(3, 2))
    assert torch.equal(bn.bias, plain[1].bias.detach().expand(3, 2))
    batch = episode()
    loss, _ = algo.meta_loss(batch)
    others, rows_w, rows_b = weights(algo)
    got = torch.autograd.grad(loss, [*others, rows_w, rows_b])
    shared_w, shared_b = plain[1].weight, plain[1].bias  # one tensor for every step
    want_loss = reference_losses(others, [shared_w] * 3, [shared_b] * 3, batch, 2)[-1]
    want = torch.autograd.grad(want_loss, [*others, shared_w, shared_b])
    assert torch.allclose(loss, want_loss, rtol=1e-12, atol=0)
    for a, b in zip(got[:4], want[:4]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
    assert torch.allclose(got[4].sum(0), want[4], rtol=1e-10, atol=1e-13)
    assert torch.allclose(got[5].sum(0), want[5], rtol=1e-10, atol=1e-13)
    assert all(row.abs().sum() > 0 for row in [*got[4], *got[5]])  # support steps 0, 1 and the query


def test_the_network_after_k_steps_uses_set_k():
    """Distinct sets: the meta-loss and meta-gradient match the reference only with set k after
    k steps (not a fixed set); with the multi-step loss, the query after step k uses set k + 1;
    test-time steps beyond inner_steps keep the last set."""
    algo = learner(steps=2, multi_step_loss=True, msl_iterations=10)
    with torch.no_grad():
        algo.backbone[1].weight.uniform_(0.5, 1.5)
        algo.backbone[1].bias.uniform_(-0.5, 0.5)
    others, rows_w, rows_b = weights(algo)
    batch = episode()
    algo.train()
    loss, _ = algo.meta_loss(batch)  # MSL phase: 0.5 * (query loss after step 1 + after step 2)
    want_loss = sum(reference_losses(others, rows_w, rows_b, batch, 2)) / 2
    assert torch.allclose(loss, want_loss, rtol=1e-12, atol=0)
    for a, b in zip(torch.autograd.grad(loss, [*others, rows_w, rows_b]),
                    torch.autograd.grad(want_loss, [*others, rows_w, rows_b])):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
    for ignored in (lambda k: 0, lambda k: 2):  # one set for every step: another loss
        assert not torch.allclose(loss, sum(reference_losses(others, rows_w, rows_b, batch, 2, ignored)) / 2)
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    four = F.cross_entropy(algo.inner_loop(sx, sy, 4, LR, False)(qx), qy)
    assert torch.allclose(four, reference_losses(others, rows_w, rows_b, batch, 4, lambda k: min(k, 2))[-1],
                          rtol=1e-12, atol=0)


def test_checkpoint_round_trip_and_the_exported_classifier():
    algo = learner(seed=3)
    with torch.no_grad():
        algo.backbone[1].weight.uniform_(0.5, 1.5)
    state = algo.state_dict()
    assert state["backbone.1.weight"].shape == (3, 2)
    restored = learner(seed=4)
    restored.load_state_dict(state)
    batch = episode(seed=5)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    restored.eval()
    logits = restored.adapt(sx, sy, 3)(qx)
    assert torch.equal(logits, algo.eval().adapt(sx, sy, 3)(qx))
    exported = restored.adapt_module(sx, sy, 3)  # metafsl export: the adapted network's set, plain operations
    assert not any(isinstance(m, PerStepBatchNorm) for m in exported.modules())
    assert torch.allclose(exported(qx), logits, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="size mismatch"):  # a plain MAML has one set: not its checkpoint
        MAML(net(), n_way=3, inner_steps=2).double().load_state_dict(state)


@pytest.mark.parametrize("options, words", [
    ({"backend": "vmap"}, "need algo.backend=l2l"),
    ({"recompute_inner": True}, "without the MAML++ options"),
])
def test_refusals_are_one_sentence(options, words):
    with pytest.raises(UserError) as err:
        learner(**options)
    assert words in str(err.value) and str(err.value).count(". ") == 0 and str(err.value).endswith(".")


def test_a_backbone_without_batch_norm_is_refused():
    """(The compiled meta-gradient with per-step rows: tests/test_maml_compiled.py.)"""
    flat = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    flat.out_features = 4
    with pytest.raises(UserError, match=r"^algo.per_step_bn=true needs a backbone with batch-norm layers"):
        MAML(flat, n_way=3, per_step_bn=True)
