"""Backbones: feature extractors mapping images (B, C, H, W) to embeddings (B, D).

Built from learn2learn's model zoo where it fits (conv4, resnet12).
"""
from __future__ import annotations

import torch
from torch import nn

from metafsl._l2l import learn2learn
from metafsl.errors import UserError

BACKBONES = {
    "conv4": "4 x [3x3 conv, batch norm, ReLU, 2x2 max-pool]; Vinyals et al. / Snell et al.",
    "resnet12": "ResNet-12 (MetaOptNet widths 64-160-320-640), average-pooled embedding",
    "conv4_32": "conv4 with 32 filters per layer (MAML / Ravi & Larochelle miniImageNet setting)",
    "wrn28_10": "WRN-28-10 wide residual network (Zagoruyko & Komodakis 2016), average-pooled",
}


def build_backbone(name: str, channels: int, image_size: int, **kwargs) -> nn.Module:
    """Instantiate a backbone and record its embedding size in ``.out_features``."""
    if name in ("conv4", "conv4_32"):
        layers = int(kwargs.get("layers", 4))
        model = learn2learn().vision.models.CNN4Backbone(
            hidden_size=int(kwargs.get("hidden", 64)),
            layers=layers,
            channels=channels,
            max_pool=True,
            max_pool_factor=1.0,
        )
        if kwargs.get("pool_first", True):  # same function, cheaper ReLU (see models/conv4.py)
            from metafsl.models.conv4 import pool_before_relu  # noqa: PLC0415

            pool_before_relu(model)
    elif name == "wrn28_10":
        from metafsl.models.wrn import WideResNet  # noqa: PLC0415

        model = WideResNet(depth=int(kwargs.get("depth", 28)), widen=int(kwargs.get("widen", 10)),
                           dropout=float(kwargs.get("dropout", 0.0)), channels=channels)
    elif name == "resnet12":
        model = learn2learn().vision.models.ResNet12Backbone(
            avg_pool=True,
            wider=bool(kwargs.get("wider", True)),
            embedding_dropout=float(kwargs.get("dropout", 0.0)),
            dropblock_dropout=float(kwargs.get("dropblock", 0.0)),
            channels=channels,
        )
    else:
        raise UserError(f"Unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}.")
    with torch.no_grad():
        was_training = model.training
        model.eval()
        out = model(torch.zeros(2, channels, image_size, image_size))
        model.train(was_training)
    model.out_features = int(out.shape[-1])
    return model
