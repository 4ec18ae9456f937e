"""Backbones: metafsl's conv4 computes exactly learn2learn's CNN4Backbone function."""
from __future__ import annotations

import torch

from metafsl.algorithms.maml import MAML
from metafsl.models import build_backbone
from metafsl.models.conv4 import _conv_block_class


def twin_backbones(size: int = 16):
    torch.manual_seed(0)
    ours = build_backbone("conv4", 1, size, hidden=6, layers=3)
    torch.manual_seed(0)
    ref = build_backbone("conv4", 1, size, hidden=6, layers=3, pool_first=False)
    return ours, ref


def test_blocks_pool_before_relu_with_learn2learn_weights():
    ours, ref = twin_backbones()
    base, fast = _conv_block_class()
    assert {type(m) for m in ours.modules()} & {base, fast} == {fast}
    assert {type(m) for m in ref.modules()} & {base, fast} == {base}
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k


def test_same_outputs_and_gradients_first_and_second_order():
    ours, ref = twin_backbones()
    x = torch.randn(10, 1, 16, 16, dtype=torch.float64)
    ours, ref = ours.double(), ref.double()
    out_o, out_r = ours(x), ref(x)
    assert torch.equal(out_o, out_r)
    assert (out_r == 0).any() and (out_r > 0).any()  # both ReLU branches are exercised
    w = torch.randn_like(out_r)
    for model, out in ((ours, out_o), (ref, out_r)):
        grads = torch.autograd.grad((out * w).sum(), list(model.parameters()), create_graph=True)
        model.g1 = grads
        model.g2 = torch.autograd.grad(sum((g ** 2).sum() for g in grads), list(model.parameters()))
    for a, b in zip(ours.g1, ref.g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(ours.g2, ref.g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_maml_clones_use_their_own_weights():
    """learn2learn's clone_module copies the swapped class; the adapted clone must differ."""
    torch.manual_seed(0)
    algo = MAML(build_backbone("conv4", 1, 12, hidden=4, layers=2), 3, inner_lr=0.5, inner_steps=1)
    x, y = torch.randn(6, 1, 12, 12), torch.arange(3).repeat(2)
    before = algo.l2l_model(x).detach()
    adapted = algo.inner_loop(x, y, steps=1, lr=0.5, first_order=False)
    assert not torch.allclose(adapted(x), before)
    assert torch.equal(algo.l2l_model(x).detach(), before)  # the original is untouched


def test_resnet12_pools_globally_at_every_size():
    """ResNet-12 takes CIFAR-FS's 32x32 and Omniglot's 28x28 (learn2learn's fixed 5x5 pool took
    84x84 only), and at 84x84 it is learn2learn's function (to float rounding)."""
    from torch import nn

    for size in (28, 32, 84):
        net = build_backbone("resnet12", 3, size, wider=False)
        assert net.out_features == 512 and net(torch.randn(2, 3, size, size)).shape == (2, 512)
    torch.manual_seed(0)
    net = build_backbone("resnet12", 3, 84, wider=False).eval()
    x = torch.randn(2, 3, 84, 84)
    ours = net(x)
    net.avgpool = nn.AvgPool2d(5, stride=1)  # learn2learn's pool
    torch.testing.assert_close(net(x), ours, rtol=1e-6, atol=1e-6)  # the same mean, summed in another order


def test_resnet12_without_its_pool_flattens_the_last_map_as_metaoptnet():
    for size, side in ((32, 2), (84, 5)):
        net = build_backbone("resnet12", 3, size, avg_pool=False)
        assert net.out_features == 640 * side * side and net(torch.randn(2, 3, size, size)).shape == (2, 640 * side * side)
    pooled = build_backbone("resnet12", 3, 32)
    assert pooled.state_dict().keys() == net.state_dict().keys()  # the same weights either way
