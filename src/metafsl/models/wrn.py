"""Wide residual networks (Zagoruyko & Komodakis, BMVC 2016) as few-shot backbones.

WRN-28-10 is the backbone of LEO (Rusu et al. 2019) and of Dhillon et al.'s transductive
baseline (2020).  learn2learn 0.2.0 ships ``vision.models.WRN28Backbone`` but it is fixed to
3-channel inputs, average-pools with a hard-coded 21x21 window (84x84 images only) and sets
batch-norm ``momentum=0.9`` (TensorFlow's convention, which in PyTorch keeps 90% of the
*current* batch), so this module builds its own: any channel count and image size (global
average pooling), PyTorch's default batch-norm momentum, pre-activation blocks with dropout.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-(dropout)-conv3x3 + shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (nn.Identity() if stride == 1 and in_planes == planes
                         else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-depth-widen: stages of 16k, 32k, 64k channels; embedding size 64 * widen."""

    def __init__(self, depth: int = 28, widen: int = 10, dropout: float = 0.0, channels: int = 3):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            from metafsl.errors import UserError

            raise UserError(f"Wide ResNet depth must be 6n + 4 (e.g. 16, 22, 28), not {depth}.")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(channels, widths[0], 3, padding=1, bias=False)
        blocks, in_planes = [], widths[0]
        for stage, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(WideBlock(in_planes, stage, stride if i == 0 else 1, dropout))
                in_planes = stage
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def wrn(channels: int, image_size: int, depth: int = 28, widen: int = 10, dropout: float = 0.0) -> nn.Module:
    """WRN-``depth``-``widen`` with global average pooling (any image size)."""
    from metafsl.models import with_out_features

    return with_out_features(WideResNet(depth=int(depth), widen=int(widen), dropout=float(dropout),
                                        channels=channels), channels, image_size)
