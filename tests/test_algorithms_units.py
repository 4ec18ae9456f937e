"""Numerical unit tests of each method's core computation on tiny inputs (no data, no CLI)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metafsl.data.sampler import TaskBatch

torch.set_num_threads(1)


class TinyBody(nn.Module):
    """A 2-layer MLP 'backbone' on 1x4x4 images: out_features = 6."""

    def __init__(self, out: int = 6):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, out))
        self.out_features = out

    def forward(self, x):
        return self.net(x)


def make_batch(b=2, n_way=3, shot=2, query=2, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(n_way).repeat_interleave(shot).expand(b, -1)
    qy = torch.arange(n_way).repeat_interleave(query).expand(b, -1)
    centres = torch.randn(b, n_way, 1, 4, 4, generator=g) * 2
    sx = centres[:, sy[0]] + 0.1 * torch.randn(b, n_way * shot, 1, 4, 4, generator=g)
    qx = centres[:, qy[0]] + 0.1 * torch.randn(b, n_way * query, 1, 4, 4, generator=g)
    return TaskBatch(sx, sy, qx, qy, n_way, shot, query)


# ----------------------------------------------------------------------------- Matching Networks
@pytest.mark.parametrize("fce", [False, True])
def test_matchingnet_attention_sums_to_one(fce):
    from metafsl.algorithms.matchingnet import MatchingNet, attention_log_probs

    torch.manual_seed(0)
    algo = MatchingNet(TinyBody(), fce=fce, fce_steps=2)
    batch = make_batch()
    att = algo.attention(*algo.embed_episodes(batch))
    assert att.shape == (2, 6, 6)
    assert torch.allclose(att.sum(-1), torch.ones(2, 6), atol=1e-6)
    assert (att >= 0).all()
    logp = attention_log_probs(att, batch.support_y, 3)
    # class probability = attention mass on that class's support examples
    manual = torch.stack([att[..., batch.support_y[0] == k].sum(-1) for k in range(3)], -1)
    assert torch.allclose(logp.exp(), manual, atol=1e-6)
    assert torch.allclose(algo.batch_logits(batch).exp().sum(-1), torch.ones(2, 6), atol=1e-5)


def test_cosine_attention_prefers_the_most_similar_support_example():
    from metafsl.algorithms.matchingnet import cosine_attention

    support = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    query = torch.tensor([[[2.0, 0.1]]])
    att = cosine_attention(query, support, temperature=1.0)[0, 0]
    assert att.argmax() == 0
    cos = torch.tensor([2.0 / math.hypot(2, 0.1), 0.1 / math.hypot(2, 0.1), -2.0 / math.hypot(2, 0.1)])
    assert torch.allclose(att, torch.softmax(cos, 0), atol=1e-6)


# ----------------------------------------------------------------------------- Relation Network
def test_relation_scores_in_unit_interval_and_mse_loss():
    from metafsl.algorithms.relationnet import RelationNet

    torch.manual_seed(0)
    algo = RelationNet(TinyBody(), width=16, hidden=8)
    batch = make_batch(shot=3)
    scores = algo.batch_logits(batch)
    assert scores.shape == (2, 6, 3)
    assert ((scores >= 0) & (scores <= 1)).all()
    loss, acc = algo.meta_loss(batch)
    # meta_loss recomputes the scores (batch norm in train mode): same inputs, same scores
    target = nn.functional.one_hot(batch.query_y, 3).float()
    assert torch.allclose(loss, ((algo.batch_logits(batch) - target) ** 2).mean(), atol=1e-6)
    loss.backward()
    assert algo.relation.net[0].weight.grad is not None and algo.backbone.net[1].weight.grad is not None


# ----------------------------------------------------------------------------- Siamese
def test_siamese_pairs_and_nearest_support_example():
    from metafsl.algorithms.siamese import Siamese, nearest_support_scores, pair_labels

    qy = torch.tensor([[0, 1]])
    sy = torch.tensor([[0, 0, 1]])
    assert pair_labels(qy, sy).tolist() == [[[1, 1, 0], [0, 0, 1]]]
    pair = torch.tensor([[[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]]])
    scores = nearest_support_scores(pair, sy, 2)
    assert torch.allclose(scores, torch.tensor([[[0.9, 0.5], [0.8, 0.3]]]))
    torch.manual_seed(0)
    algo = Siamese(TinyBody(), balance=True)
    batch = make_batch()
    loss, _ = algo.meta_loss(batch)
    support, query = algo.embed_episodes(batch)
    logits = algo.pair_logits(query, support)
    same = pair_labels(batch.query_y, batch.support_y)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, same, reduction="none")
    balanced = 0.5 * bce[same == 1].mean() + 0.5 * bce[same == 0].mean()
    assert torch.allclose(loss, balanced, atol=1e-6)
    # identical images are "more same" than different ones at initialisation (distance weights <= 0)
    x = torch.randn(1, 2, 6)
    assert algo.pair_logits(x[:, :1], x)[0, 0, 0] >= algo.pair_logits(x[:, :1], x)[0, 0, 1]


# ----------------------------------------------------------------------------- MetaOptNet
def test_ridge_head_solves_its_closed_form():
    from metafsl.algorithms.metaoptnet import ridge_head

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 4, generator=g, dtype=torch.float64)
    q = torch.randn(1, 3, 4, generator=g, dtype=torch.float64)
    y = nn.functional.one_hot(torch.tensor([[0, 0, 1, 1, 2, 2]]), 3).double()
    lam = 0.7
    # primal: W = (X^T X + lam I)^-1 X^T Y minimises ||XW - Y||^2 + lam ||W||^2
    w = torch.linalg.solve(x[0].T @ x[0] + lam * torch.eye(4, dtype=torch.float64), x[0].T @ y[0])
    assert torch.allclose(ridge_head(q, x, y, lam)[0], q[0] @ w, atol=1e-10)
    grad = 2 * x[0].T @ (x[0] @ w - y[0]) + 2 * lam * w  # stationarity of the ridge objective
    assert grad.abs().max() < 1e-10


def test_svm_head_satisfies_kkt_conditions():
    from metafsl.algorithms.metaoptnet import project_cs_dual, svm_dual, svm_dual_objective

    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    onehot = nn.functional.one_hot(labels, 3).double()
    centres = torch.randn(3, 5, generator=g, dtype=torch.float64) * 3
    x = centres[labels[0]][None] + 0.3 * torch.randn(1, 6, 5, generator=g, dtype=torch.float64)
    gram = x @ x.transpose(1, 2)
    for c in (0.1, 100.0):
        alpha = svm_dual(gram, onehot, c, steps=3000)
        # primal/dual feasibility: sum_k alpha_ik = 0, alpha_i <= C onehot(y_i)
        assert alpha.sum(-1).abs().max() < 1e-9
        assert (alpha <= c * onehot + 1e-9).all()
        # stationarity + complementary slackness: alpha is a fixed point of projected gradient
        lip = torch.linalg.eigvalsh(gram).max()
        fixed = project_cs_dual(alpha - (gram @ alpha - onehot) / lip, onehot, c)
        assert (fixed - alpha).abs().max() < 1e-6 * max(1.0, c)
        # no feasible random perturbation does better
        base = svm_dual_objective(alpha, gram, onehot)
        for _ in range(20):
            other = project_cs_dual(alpha + 0.05 * torch.randn(alpha.shape, generator=g, dtype=torch.float64),
                                    onehot, c)
            assert svm_dual_objective(other, gram, onehot) >= base - 1e-9
    # hard-margin regime (large C, separable data): w_y.x - w_k.x >= 1 for k != y
    w = alpha[0].T @ x[0]  # (K, D)
    scores = x[0] @ w.T
    margins = scores.gather(1, labels[0][:, None]) - scores
    margins[torch.arange(6), labels[0]] = float("inf")
    assert margins.min() > 1 - 1e-4


def test_metaoptnet_svm_is_differentiable_and_classifies_separable_tasks():
    from metafsl.algorithms.metaoptnet import MetaOptNet

    torch.manual_seed(0)
    algo = MetaOptNet(TinyBody(), head="svm", svm_steps=20, test_svm_steps=100)
    batch = make_batch()
    loss, _ = algo.meta_loss(batch)
    loss.backward()
    assert algo.scale.grad is not None and torch.isfinite(algo.backbone.net[1].weight.grad).all()
    algo.backbone = nn.Flatten()  # raw pixels are separable here
    assert algo.evaluate(batch).min() == 1.0


# ----------------------------------------------------------------------------- ANIL / Meta-SGD
def test_anil_inner_loop_leaves_the_body_untouched():
    from metafsl.algorithms.anil import ANIL

    torch.manual_seed(0)
    algo = ANIL(TinyBody(), n_way=3, inner_lr=0.5, inner_steps=2)
    batch = make_batch()
    body_before = [p.detach().clone() for p in algo.backbone.parameters()]
    head_before = algo.head.module.weight.detach().clone()
    support = algo.backbone(batch.support_x[0])
    adapted = algo.adapt_head(support, batch.support_y[0], steps=2, lr=0.5, first_order=False)
    # only the head's two tensors live in the adapted model; they moved
    assert len(list(adapted.parameters())) == 2
    assert not torch.allclose(adapted.module.weight, head_before)
    assert all(torch.equal(a, b) for a, b in zip(algo.backbone.parameters(), body_before))
    assert all(p.grad is None for p in algo.backbone.parameters())
    # the outer loss still trains the body (through the features, second order)
    loss, _ = algo.meta_loss(batch)
    loss.backward()
    assert all(p.grad is not None for p in algo.backbone.parameters())
    assert algo.head.module.weight.grad is not None


def test_metasgd_inner_step_uses_per_parameter_rates():
    from metafsl.algorithms.metasgd import MetaSGD

    torch.manual_seed(0)
    algo = MetaSGD(TinyBody(), n_way=3, lr_init_min=0.01, lr_init_max=0.5)
    lrs = list(algo.l2l_model.lrs)
    assert all(((r >= 0.01) & (r <= 0.5)).all() for r in lrs)
    assert lrs[0].unique().numel() > 1  # one rate per parameter entry
    batch = make_batch()
    params = list(algo.l2l_model.module.parameters())
    loss = nn.functional.cross_entropy(algo.l2l_model(batch.support_x[0]), batch.support_y[0])
    grads = torch.autograd.grad(loss, params)
    adapted = algo.inner_loop(batch.support_x[0], batch.support_y[0], steps=1, first_order=False)
    for p, r, g, new in zip(params, lrs, grads, adapted.module.parameters()):
        assert torch.allclose(new, p - r * g, atol=1e-6)
    # the rates are meta-learned: the query loss reaches them
    loss, _ = algo.meta_loss(batch)
    loss.backward()
    assert all(r.grad is not None for r in lrs)


# ----------------------------------------------------------------------------- Reptile
@pytest.mark.parametrize("inner", ["adam", "sgd"])
def test_reptile_outer_step_is_interpolation_towards_adapted_weights(inner):
    from metafsl.algorithms.reptile import Reptile

    torch.manual_seed(0)
    algo = Reptile(TinyBody(), n_way=3, inner_lr=0.05, inner_steps=3, inner_batch=100, inner_optimizer=inner)
    batch = make_batch(b=3)
    theta = {k: p.detach().clone() for k, p in algo.net.named_parameters()}
    phis = [algo.task_weights(batch.support_x[i], batch.support_y[i], 3, 100) for i in range(3)]
    for phi in phis:  # adaptation starts at theta and does not modify it
        assert any(not torch.allclose(phi[k], theta[k]) for k in theta)
    eps = 0.3
    opt = torch.optim.SGD(algo.parameters(), lr=eps)
    loss, _ = algo.meta_loss(batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for k, p in algo.net.named_parameters():
        mean_phi = torch.stack([phi[k] for phi in phis]).mean(0)
        assert torch.allclose(p, theta[k] + eps * (mean_phi - theta[k]), atol=1e-6), k


def test_reptile_first_adam_step_and_non_transductive_prediction():
    from metafsl.algorithms.reptile import Reptile

    torch.manual_seed(0)
    algo = Reptile(TinyBody(), n_way=3, inner_lr=0.01, inner_steps=1, inner_batch=100, transductive=False)
    batch = make_batch()
    sx, sy = batch.support_x[0], batch.support_y[0]
    params = dict(algo.net.named_parameters())
    grads = torch.autograd.grad(nn.functional.cross_entropy(algo.net(sx), sy), list(params.values()))
    phi = algo.task_weights(sx, sy, 1, 100)
    for (k, p), g in zip(params.items(), grads):  # Adam, beta1 = 0, first step: lr * g / (|g| + eps)
        assert torch.allclose(phi[k], p - 0.01 * g / (g.abs() + 1e-8), atol=1e-6)
    qx = batch.query_x[0]
    logits = algo.query_logits(phi, sx, qx)
    one = algo.forward_with(phi, torch.cat([sx, qx[2:3]]))[-1]
    assert torch.allclose(logits[2], one)
    algo.transductive = True
    assert torch.allclose(algo.query_logits(phi, sx, qx), algo.forward_with(phi, qx))


# ----------------------------------------------------------------------------- MANN
def test_mann_presents_labels_with_a_one_step_offset():
    from metafsl.algorithms.mann import MANN, offset_labels

    y = torch.tensor([[2, 0, 1, 1]])
    off = offset_labels(y, 3)
    assert off[0, 0].tolist() == [0, 0, 0]
    for t in range(1, 4):
        assert off[0, t].argmax() == y[0, t - 1] and off[0, t].sum() == 1
    torch.manual_seed(0)
    algo = MANN(TinyBody(), n_way=3, controller_size=16, memory_slots=8, memory_size=5, read_heads=2)
    batch = make_batch()
    seen = []
    original = algo.step

    def spy(x, prev, state):
        seen.append(prev.clone())
        return original(x, prev, state)

    algo.step = spy
    s_logits, s_y, q_logits = algo.run(batch)
    assert s_logits.shape == (2, 6, 3) and q_logits.shape == (2, 6, 3)
    for t in range(1, 6):  # the input label at step t is the label shown at step t - 1
        assert torch.equal(seen[t].argmax(-1), s_y[:, t - 1])
    assert seen[0].abs().sum() == 0
    assert torch.equal(seen[-1].view(2, 6, 3).argmax(-1), s_y[:, -1:].expand(2, 6))  # queries


def test_mann_memory_write_uses_least_used_slots():
    from metafsl.algorithms.mann import MANN

    torch.manual_seed(0)
    algo = MANN(TinyBody(), n_way=3, controller_size=8, memory_slots=6, memory_size=4, read_heads=2)
    state = algo.initial_state(1, "cpu", torch.float32)
    state.usage = torch.tensor([[5.0, 0.1, 3.0, 0.2, 4.0, 6.0]])
    nn.init.constant_(algo.gate.bias, -30.0)  # sigmoid(alpha) ~ 0: write to least-used slots only
    nn.init.zeros_(algo.gate.weight)
    _, new = algo.step(torch.randn(1, 6), torch.zeros(1, 3), state)
    changed = (new.memory - state.memory).abs().sum(-1)[0] > 1e-4
    assert changed.tolist() == [False, True, False, True, False, False]


def test_mann_input_norm_makes_the_controller_blind_to_a_shared_offset_and_scale():
    """Post-ReLU embeddings share a large positive component; with input_norm the controller sees
    each embedding centred and scaled, so adding a constant and rescaling changes nothing."""
    from metafsl.algorithms.mann import MANN

    class Shifted(nn.Module):
        def __init__(self, body, a, c):
            super().__init__()
            self.body, self.a, self.c, self.out_features = body, a, c, body.out_features

        def forward(self, x):
            return self.a * self.body(x) + self.c

    batch = make_batch()
    for norm, same in ((True, True), (False, False)):
        torch.manual_seed(0)
        algo = MANN(TinyBody(), n_way=3, controller_size=16, memory_slots=8, memory_size=5, read_heads=2,
                    input_norm=norm)
        torch.manual_seed(1)
        plain = algo.run(batch)[2]
        algo.backbone = Shifted(algo.backbone, 3.0, 5.0)
        torch.manual_seed(1)
        shifted = algo.run(batch)[2]
        assert torch.allclose(plain, shifted, atol=1e-4) is same


# ----------------------------------------------------------------------------- meta-learner LSTM
def test_metalstm_update_cell_and_preprocessing():
    from metafsl.algorithms.metalstm import MetaLSTM, UpdateCell, preprocess

    x = torch.tensor([1.0, -1e-6, 0.0])
    out = preprocess(x, 10.0)
    assert torch.allclose(out[0], torch.tensor([0.0, 1.0]))
    assert torch.allclose(out[1], torch.tensor([-1.0, -1e-6 * math.exp(10)]))
    cell = UpdateCell(hidden=3, forget_bias=50.0, input_bias=math.log(0.1 / 0.9))
    nn.init.zeros_(cell.w_f)
    nn.init.zeros_(cell.w_i)
    theta, grad = torch.randn(5), torch.randn(5)
    new, f, i = cell(torch.randn(5, 3), theta, grad, torch.zeros(5), torch.zeros(5))
    assert torch.allclose(new, theta - 0.1 * grad, atol=1e-6)  # f = 1, i = 0.1: an SGD step
    torch.manual_seed(0)
    algo = MetaLSTM(TinyBody(), n_way=3, steps=2, hidden=4)
    batch = make_batch()
    loss, _ = algo.meta_loss(batch)
    loss.backward()
    assert algo.update.b_i.grad is not None and algo.lstm.weight_ih.grad is not None
    assert algo.head.weight.grad is not None  # the initial network parameters are meta-learned
    assert algo.evaluate(batch).shape == (2,)


# ----------------------------------------------------------------------------- Baseline / ++
@pytest.mark.parametrize("name", ["baseline", "baselinepp"])
def test_baseline_fits_a_new_head_on_frozen_features(name):
    from metafsl.algorithms.baseline import Baseline, BaselinePP, head_logits

    torch.manual_seed(0)
    cls = Baseline if name == "baseline" else BaselinePP
    algo = cls(TinyBody(), finetune_epochs=100, finetune_batch=4)  # the paper's protocol
    algo.eval()
    batch = make_batch(shot=3, query=3)
    flat = algo.backbone
    algo.backbone = nn.Flatten()  # raw preprocess: separable features
    with torch.no_grad():
        support = algo.backbone(batch.support_x.flatten(0, 1)).view(2, 9, -1)
    head = algo.fit_heads(support, batch.support_y, 3)
    assert head_logits(head, support, 2.0).argmax(-1).eq(batch.support_y).all()
    assert algo.evaluate(batch).min() == 1.0
    algo.backbone = flat
    body = [p.detach().clone() for p in algo.backbone.parameters()]
    acc = algo.evaluate(batch)
    assert acc.shape == (2,)
    assert all(torch.equal(a, b) for a, b in zip(algo.backbone.parameters(), body))
    assert all(p.grad is None for p in algo.backbone.parameters())


def test_baseline_trains_on_global_labels_and_reloads():
    from metafsl.algorithms.baseline import Baseline, BaselinePP
    from metafsl.data.base import FewShotSplit
    from metafsl.data.batches import BatchSampler
    from metafsl.engine.components import build_train_stream

    images = torch.randint(0, 255, (40, 1, 4, 4), dtype=torch.uint8)
    split = FewShotSplit(images, torch.arange(40) % 10, [str(i) for i in range(10)])
    episode = {"train": {"n_way": 5, "n_shot": 1, "n_query": 1}}
    for cls in (Baseline, BaselinePP):
        algo = cls(TinyBody(), batch_size=8)
        sampler = build_train_stream(algo, split, episode, "cpu", 0, None)  # the engine reads train_stream
        assert isinstance(sampler, BatchSampler) and algo.classifier is not None
        batch = sampler.sample(1, train=True)
        assert batch.x.shape == (8, 1, 4, 4) and batch.y.max() < 10
        loss, _ = algo.meta_loss(batch)
        loss.backward()
        fresh = cls(TinyBody(), batch_size=8)
        fresh.load_state_dict(algo.state_dict())  # the classifier is recreated from the checkpoint
        assert fresh.classifier is not None
    # epoch-wise sampling covers every image once per epoch; state_dict resumes exactly
    s = BatchSampler(split, 8, seed=3)
    seen = torch.cat([s.next_indices() for _ in range(5)])
    assert sorted(seen.tolist()) == list(range(40))
    state = s.state_dict()
    a = s.next_indices()
    s.load_state_dict(state)
    assert torch.equal(a, s.next_indices())


# ----------------------------------------------------------------------------- backbones
def test_wide_resnet_shapes():
    from metafsl.models import build_backbone

    small = build_backbone("wrn28_10", channels=1, image_size=12, depth=10, widen=1)
    assert small.out_features == 64
    assert small(torch.zeros(2, 1, 12, 12)).shape == (2, 64)
    conv = build_backbone("conv4_32", channels=1, image_size=28, hidden=32)
    assert conv.out_features == 32


# ----------------------------------------------------------------------------- checkpoints of 0.1.0
@pytest.mark.parametrize("name,old,new", [("maml.MAML", "learner.", "l2l_model."),
                                          ("metasgd.MetaSGD", "learner.", "l2l_model."),
                                          ("metalstm.MetaLSTM", "learner.", "net.")])
def test_weights_saved_under_the_old_names_still_load(name, old, new):
    """0.1.0 called learn2learn's wrapper (MAML, Meta-SGD) and the meta-learner LSTM's network
    "learner"; their checkpoints load into the renamed attributes, strictly."""
    import importlib
    from collections import OrderedDict

    module, cls = name.split(".")
    make = getattr(importlib.import_module(f"metafsl.algorithms.{module}"), cls)
    torch.manual_seed(0)
    saved, fresh = make(TinyBody(), n_way=3), make(TinyBody(), n_way=3)
    state = saved.state_dict()
    renamed = OrderedDict((old + k[len(new):] if k.startswith(new) else k, v) for k, v in state.items())
    renamed._metadata = OrderedDict((old + k[len(new):] if k.startswith(new) else k, v)
                                    for k, v in state._metadata.items())
    assert any(k.startswith(old) for k in renamed) and not any(k.startswith(new) for k in renamed)
    fresh.load_state_dict(renamed)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())
