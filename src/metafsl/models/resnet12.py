"""ResNet-12 (MetaOptNet, Lee et al. 2019): learn2learn's ``ResNet12Backbone``, average-pooled."""
from __future__ import annotations

from torch import nn

from metafsl._l2l import learn2learn
from metafsl.models import with_out_features


def resnet12(channels: int, image_size: int, wider: bool = True, dropblock: float = 0.0,
             dropout: float = 0.0) -> nn.Module:
    """wider: channels 64-160-320-640 (MetaOptNet) instead of 64-128-256-512.

    learn2learn's average pool is a fixed 5x5 window, the last feature map of an 84x84 image, so
    any other size failed (CIFAR-FS and FC100 at 32x32 left a 2x2 map, Omniglot at 28x28 1x1).
    A global average pool is the same function at 84x84 (to float rounding) and works at every size the four
    stages can take (tests/test_backbones.py); it holds no weights, so checkpoints are unchanged."""
    model = learn2learn().vision.models.resnet12.ResNet12Backbone(
        avg_pool=True, wider=bool(wider), embedding_dropout=float(dropout),
        dropblock_dropout=float(dropblock), channels=channels)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    return with_out_features(model, channels, image_size)
