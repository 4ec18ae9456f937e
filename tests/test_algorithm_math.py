"""Numerical checks of ProtoNet and MAML on tiny inputs."""
import copy

import torch
from torch import nn

from metafsl.algorithms.maml import MAML
from metafsl.algorithms.protonet import ProtoNet, prototypes, sq_euclidean_logits
from metafsl.data.sampler import TaskBatch


class Flatten(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        self.out_features = d_out

    def forward(self, x):
        return self.lin(x.flatten(1))


def tiny_batch(b=2, way=3, shot=2, query=2, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(b, way * shot, 1, 1, d, generator=g)
    qx = torch.randn(b, way * query, 1, 1, d, generator=g)
    sy = torch.arange(way).repeat_interleave(shot).expand(b, -1)
    qy = torch.arange(way).repeat_interleave(query).expand(b, -1)
    return TaskBatch(sx, sy, qx, qy, way, shot, query)


def test_prototypes_are_class_means():
    s = torch.randn(1, 6, 5)
    y = torch.tensor([[0, 1, 2, 0, 1, 2]])
    p = prototypes(s, y, 3)
    for k in range(3):
        assert torch.allclose(p[0, k], s[0, y[0] == k].mean(0), atol=1e-6)


def test_logits_are_negative_squared_distances():
    q, p = torch.randn(2, 4, 5), torch.randn(2, 3, 5)
    expected = -((q[:, :, None] - p[:, None]) ** 2).sum(-1)
    assert torch.allclose(sq_euclidean_logits(q, p), expected, atol=1e-5)


def test_protonet_logits_use_the_backbone_embeddings():
    torch.manual_seed(0)
    net = Flatten(4, 3)
    algo = ProtoNet(net)
    batch = tiny_batch()
    logits = algo.batch_logits(batch)
    with torch.no_grad():
        s = net(batch.support_x[0])
        q = net(batch.query_x[0])
    protos = torch.stack([s[batch.support_y[0] == k].mean(0) for k in range(3)])
    assert torch.allclose(logits[0], -torch.cdist(q, protos) ** 2, atol=1e-4)
    loss, acc = algo.meta_loss(batch)
    assert loss.requires_grad and 0 <= float(acc) <= 1


def test_maml_adaptation_equals_a_manual_gradient_step():
    torch.manual_seed(0)
    algo = MAML(Flatten(4, 5), n_way=3, inner_lr=0.3, inner_steps=1)
    batch = tiny_batch(b=1)
    sx, sy = batch.support_x[0], batch.support_y[0]
    # manual: theta' = theta - lr * grad L_support(theta)
    model = copy.deepcopy(nn.Sequential(algo.backbone, algo.head))
    loss = nn.functional.cross_entropy(model(sx), sy)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p -= 0.3 * g
    adapted = algo.inner_loop(sx, sy, steps=1, lr=0.3, first_order=False)
    qx = batch.query_x[0]
    assert torch.allclose(adapted(qx), model(qx), atol=1e-5)


def test_maml_second_order_meta_gradient_matches_autograd_by_hand():
    torch.manual_seed(1)
    algo = MAML(Flatten(4, 5), n_way=3, inner_lr=0.5, inner_steps=1)
    batch = tiny_batch(b=1, seed=3)
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    params = [p for p in algo.parameters()]
    loss, _ = algo.meta_loss(batch)
    got = torch.autograd.grad(loss, params)

    # By hand with torch.func: L_q(theta - lr * dL_s/dtheta), differentiated w.r.t. theta.
    from torch.func import functional_call, grad
    model = nn.Sequential(algo.backbone, algo.head)
    names = [n for n, _ in model.named_parameters()]

    def outer(theta):
        inner = grad(lambda t: nn.functional.cross_entropy(functional_call(model, dict(zip(names, t)), (sx,)), sy))(theta)
        adapted = tuple(t - 0.5 * g for t, g in zip(theta, inner))
        return nn.functional.cross_entropy(functional_call(model, dict(zip(names, adapted)), (qx,)), qy)

    want = grad(outer)(tuple(p.detach() for p in model.parameters()))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)
    # first order differs (drops the Hessian term) but has the same shapes
    algo.first_order = True
    algo.l2l_model.first_order = True
    fo = torch.autograd.grad(algo.meta_loss(batch)[0], params)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(fo, want))


def test_maml_batch_norm_uses_batch_statistics():
    bn_net = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5))
    bn_net.out_features = 5
    algo = MAML(bn_net, n_way=3)
    bn = bn_net[2]
    assert bn.running_mean is None and not bn.track_running_stats
    algo.eval()
    x = torch.randn(6, 1, 1, 4) * 3 + 2
    out = bn_net(x)
    assert torch.allclose(out.mean(0), bn.bias, atol=1e-5)


def test_maml_plus_plus_per_step_rates_match_maml_and_are_learned():
    """LSLR at its initial rates computes MAML's loss and meta-gradient; the rates get gradients,
    and a rate of 0 for a step leaves that step's weights where they were."""
    torch.manual_seed(2)
    batch = tiny_batch(b=2, seed=5)
    plain = MAML(Flatten(4, 5), n_way=3, inner_lr=0.3, inner_steps=2)
    lslr = MAML(copy.deepcopy(plain.backbone), n_way=3, inner_lr=0.3, inner_steps=2, per_step_lr=True)
    lslr.head.load_state_dict(plain.head.state_dict())
    assert lslr.step_lrs.shape == (3, 4)  # max(train 2, test 3) steps x 4 tensors
    loss_a, _ = plain.meta_loss(batch)
    loss_b, _ = lslr.meta_loss(batch)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    ga = torch.autograd.grad(loss_a, list(plain.l2l_model.parameters()))
    gb = torch.autograd.grad(loss_b, list(lslr.l2l_model.parameters()) + [lslr.step_lrs])
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-5)
    assert gb[-1][:2].abs().sum() > 0 and gb[-1][2].abs().sum() == 0  # step 3 is test-only
    with torch.no_grad():
        lslr.step_lrs.zero_()
    sx, sy = batch.support_x[0], batch.support_y[0]
    model = lslr.inner_loop(sx, sy, steps=2, lr=0.3, first_order=True)
    for p, q in zip(model.parameters(), lslr.l2l_model.parameters()):
        assert torch.equal(p, q)


def test_maml_plus_plus_multi_step_loss_weights_and_loss():
    torch.manual_seed(3)
    algo = MAML(Flatten(4, 5), n_way=3, inner_lr=0.3, inner_steps=4, multi_step_loss=True, msl_iterations=100)
    w0 = algo.msl_weights(4)
    assert torch.allclose(w0, torch.full((4,), 0.25))
    algo.msl_iteration.fill_(50)
    w5 = algo.msl_weights(4)
    assert torch.allclose(w5[:3], torch.full((3,), 0.125)) and abs(float(w5.sum()) - 1) < 1e-6
    algo.msl_iteration.fill_(99)
    assert torch.allclose(algo.msl_weights(4)[:3], torch.full((3,), 0.03 / 4))  # MAML++'s floor
    algo.msl_iteration.fill_(100)
    assert algo.msl_weights(4).tolist() == [0, 0, 0, 1]  # then plain MAML
    # the loss is the weighted sum of the query losses after each inner step
    algo.msl_iteration.fill_(50)
    batch = tiny_batch(b=1, seed=7)
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    want = sum(w * nn.functional.cross_entropy(algo.inner_loop(sx, sy, s, 0.3, False)(qx), qy)
               for s, w in zip(range(1, 5), w5.tolist()))
    algo.train()
    loss, _ = algo.meta_loss(batch)
    assert torch.allclose(loss, want, atol=1e-5)
    algo.meta_backward(batch)
    assert int(algo.msl_iteration) == 51  # one training iteration advances the schedule
    algo.eval()
    plain = nn.functional.cross_entropy(algo.inner_loop(sx, sy, 4, 0.3, False)(qx), qy)
    assert torch.allclose(algo.meta_loss(batch)[0], plain, atol=1e-5)  # not training: last step only
