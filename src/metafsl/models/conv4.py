"""conv4: learn2learn's ``CNN4Backbone`` with each block's max-pool moved before its ReLU.

ReLU is monotonic, so it commutes with max-pooling exactly: ``relu(maxpool(x))`` equals
``maxpool(relu(x))`` value for value, and the gradient (first and second order) is the same
too: it reaches the window's maximum when that maximum is positive and is zero otherwise,
in both orders.  Pooling first runs the ReLU and its backward on a quarter of the values
(the time saved is measured in docs/benchmarks.md).  Parameters, state-dict keys and initialisation are learn2learn's.
"""
from __future__ import annotations

import functools

import torch
from torch import nn


@functools.cache
def _conv_block_class():
    from metafsl._l2l import learn2learn

    conv_block = learn2learn().vision.models.cnn4.ConvBlock

    class PoolFirstConvBlock(conv_block):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.max_pool(self.normalize(self.conv(x))))

    return conv_block, PoolFirstConvBlock


def pool_before_relu(model: nn.Module) -> nn.Module:
    """Switch every learn2learn conv block of ``model`` to the pool-then-ReLU order (in place).

    Blocks without a max-pool module are left alone.  The class is swapped rather than the
    ``forward`` attribute, so learn2learn's ``clone_module`` and ``torch.func`` keep working.
    """
    base, fast = _conv_block_class()
    for m in model.modules():
        if type(m) is base and isinstance(m.max_pool, nn.MaxPool2d) and isinstance(m.relu, nn.ReLU):
            m.__class__ = fast
    return model


def conv4(channels: int, image_size: int, hidden: int = 64, layers: int = 4,
          pool_first: bool = True) -> nn.Module:
    """``layers`` blocks of [3x3 conv (``hidden`` filters), batch norm, ReLU, 2x2 max-pool]."""
    from metafsl._l2l import learn2learn
    from metafsl.models import with_out_features

    model = learn2learn().vision.models.cnn4.CNN4Backbone(
        hidden_size=int(hidden), layers=int(layers), channels=channels, max_pool=True,
        max_pool_factor=1.0)
    if pool_first:
        pool_before_relu(model)
    return with_out_features(model, channels, image_size)


def channel_separable(module: nn.Module) -> bool:
    """Whether ``module`` is a conv4 block (either order) whose output channel ``c`` depends only
    on its input and on row ``c`` of each of its four parameters (conv weight and bias, batch-norm
    weight and bias): true when the batch norm normalises with batch statistics (no running
    averages), as every operation after the convolution then works channel by channel."""
    base, fast = _conv_block_class()
    return (type(module) in (base, fast) and module.conv.groups == 1 and module.conv.bias is not None
            and module.normalize.affine and module.normalize.running_mean is None
            and "forward" not in vars(module))
