"""FiLM conditioning of any backbone through forward hooks (Perez et al., AAAI 2018; used by TADAM).

Every batch-norm layer of the backbone gets a forward hook that, while conditioning is on, maps
its output ``y`` (N, C, H, W) to ``gamma * y + beta`` with per-image, per-channel ``gamma`` and
``beta`` (N, C).  The backbone's modules and state-dict keys are untouched (conv4, ResNet-12 and
WRN alike: in each of them batch norm follows a convolution and precedes the non-linearity), so
a pretrained backbone loads as it is.  The hook is a module-level function reading an attribute
of the layer, so deep copies of the backbone (export, ``detached_copy``) keep working.

Written here rather than taken from a library: the hooks must condition learn2learn's and our
own backbones in place, per image, and stay traceable; no library does that.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

#: the attribute of a conditioned layer holding its (gamma, beta), each (N, C), or None
ATTR = "_film_params"

Film = Tuple[torch.Tensor, torch.Tensor]


def film_hook(module: nn.Module, inputs, output: torch.Tensor) -> Optional[torch.Tensor]:
    """``gamma * output + beta`` per image and channel while the layer is conditioned."""
    params = getattr(module, ATTR, None)
    if params is None:
        return None
    gamma, beta = params
    shape = gamma.shape + (1,) * (output.dim() - 2)
    return output * gamma.reshape(shape) + beta.reshape(shape)


def film_layers(backbone: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """The layers FiLM conditions: every batch norm of ``backbone``, in module order."""
    return [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def attach(backbone: nn.Module) -> List[int]:
    """Register the hook on every layer of ``film_layers`` (once); returns their channel counts."""
    layers = film_layers(backbone)
    for m in layers:
        if not getattr(m, "_film_hooked", False):
            m.register_forward_hook(film_hook)
            m._film_hooked = True
            setattr(m, ATTR, None)
    return [m.num_features for m in layers]


@contextlib.contextmanager
def conditioned(backbone: nn.Module, params: Sequence[Film]) -> Iterator[None]:
    """Within the block, the backbone's layers are conditioned by ``params`` (one (gamma, beta)
    per layer of ``film_layers``, each (N, C) for a forward pass of N images)."""
    layers = film_layers(backbone)
    if len(layers) != len(params):
        raise ValueError(f"FiLM needs {len(layers)} (gamma, beta) pairs, got {len(params)}")
    for m, p in zip(layers, params):
        setattr(m, ATTR, p)
    try:
        yield
    finally:
        for m in layers:
            setattr(m, ATTR, None)


class TaskEmbeddingNetwork(nn.Module):
    """TADAM's TEN: for each conditioned layer of C channels, two small networks (D -> C -> C with a
    ReLU) give ``g`` and ``h`` from the task representation; ``gamma = 1 + a * g``, ``beta = b * h``
    with learned scalars ``a``, ``b`` per layer initialised at 0 (the identity at initialisation)."""

    def __init__(self, dim: int, channels: Sequence[int]):
        super().__init__()

        def mlp(c: int) -> nn.Module:
            return nn.Sequential(nn.Linear(dim, c), nn.ReLU(), nn.Linear(c, c))

        self.gamma = nn.ModuleList(mlp(c) for c in channels)
        self.beta = nn.ModuleList(mlp(c) for c in channels)
        self.gamma_scale = nn.Parameter(torch.zeros(len(channels)))
        self.beta_scale = nn.Parameter(torch.zeros(len(channels)))

    def forward(self, task: torch.Tensor) -> List[Film]:
        """Task representations (B, D) -> per layer (gamma, beta), each (B, C)."""
        return [(1 + self.gamma_scale[i] * g(task), self.beta_scale[i] * h(task))
                for i, (g, h) in enumerate(zip(self.gamma, self.beta))]

    def penalty(self) -> torch.Tensor:
        """Squared L2 norm of the post-multipliers (TADAM's penalty keeps them small)."""
        return self.gamma_scale.pow(2).sum() + self.beta_scale.pow(2).sum()


class FilmedBackbone(nn.Module):
    """A copy of a hooked backbone conditioned by fixed FiLM parameters (buffers, one task's):
    what TADAM exports.  Images (N, C, H, W) -> embeddings (N, D)."""

    def __init__(self, backbone: nn.Module, params: Sequence[Film]):
        super().__init__()
        import copy

        self.backbone = copy.deepcopy(backbone)
        self.n = len(params)
        for i, (g, b) in enumerate(params):
            self.register_buffer(f"gamma{i}", g.detach().reshape(1, -1).clone())
            self.register_buffer(f"beta{i}", b.detach().reshape(1, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = [(getattr(self, f"gamma{i}"), getattr(self, f"beta{i}")) for i in range(self.n)]
        with conditioned(self.backbone, params):
            return self.backbone(x)
