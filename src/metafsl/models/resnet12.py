"""ResNet-12 (MetaOptNet, Lee et al. 2019): learn2learn's ``ResNet12Backbone``, average-pooled
or (``avg_pool=false``, as MetaOptNet's own code) its last feature map flattened."""
from __future__ import annotations

from torch import nn

from metafsl._l2l import learn2learn
from metafsl.models import with_out_features


def resnet12(channels: int, image_size: int, wider: bool = True, dropblock: float = 0.0,
             dropout: float = 0.0, avg_pool: bool = True) -> nn.Module:
    """wider: channels 64-160-320-640 (MetaOptNet) instead of 64-128-256-512.

    avg_pool: a global average of the last feature map (640 or 512 features).  learn2learn's own
    pool is a fixed 5x5 window, the last map of an 84x84 image, so any other size failed
    (CIFAR-FS and FC100 at 32x32 leave a 2x2 map, Omniglot at 28x28 1x1); the global average is
    the same function at 84x84 (to float rounding) and takes every size the four stages can
    (tests/test_backbones.py).  false: the map flattened, as MetaOptNet trained it
    (``resnet12(avg_pool=False)`` in its train.py: 16000 features at 84x84, 2560 at 32x32).
    Neither holds weights, so a checkpoint loads either way."""
    model = learn2learn().vision.models.resnet12.ResNet12Backbone(
        avg_pool=True, wider=bool(wider), embedding_dropout=float(dropout),
        dropblock_dropout=float(dropblock), channels=channels)
    model.avgpool = nn.AdaptiveAvgPool2d(1) if avg_pool else nn.Identity()
    return with_out_features(model, channels, image_size)
