"""Backbones: feature extractors mapping images (B, C, H, W) to embeddings (B, D).

Each option file ``conf/backbone/<name>.yaml`` names its factory with ``_target_`` (conv4 and
ResNet-12 from learn2learn's model zoo, our own WRN); the factory takes the image shape and
records the embedding size in ``.out_features``.  learn2learn is imported only by the
factories that use it.
"""
from __future__ import annotations

import torch
from torch import nn


def with_out_features(model: nn.Module, channels: int, image_size: int) -> nn.Module:
    """Record the embedding size of ``model`` on images of this shape in ``.out_features``."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            out = model(torch.zeros(2, channels, image_size, image_size))
        except RuntimeError:  # e.g. a feature map pooled below 1x1
            from metafsl.errors import UserError

            raise UserError(f"This backbone cannot take {image_size}x{image_size} images "
                            f"({type(model).__name__}: too small for its layers); use a larger "
                            "dataset.image_size or fewer backbone.layers.") from None
        model.train(was_training)
    model.out_features = int(out.shape[-1])
    return model


def build_backbone(option: str, channels: int, image_size: int, **overrides) -> nn.Module:
    """The shipped option ``backbone=<option>`` with ``overrides`` (library and test convenience)."""
    from metafsl.options import build_option

    return build_option("backbone", option, overrides, channels=channels, image_size=image_size)
