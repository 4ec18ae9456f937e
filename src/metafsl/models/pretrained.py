"""torchvision and timm networks as few-shot backbones (their classifier head removed).

``backbone=resnet18`` (and resnet50, vit_b_16, convnext_tiny, or ``backbone=torchvision
backbone.model=<any torchvision classification model>``) and ``backbone=timm
backbone.model=<any timm model>`` build the architecture here, randomly initialised; the
published weights (``backbone.weights=imagenet|<tag>``) are loaded by ``metafsl.models.weights``
when a training starts (a test, predict or export takes the weights from the run's checkpoint).

The network is wrapped in ``Pretrained``, which takes the run's images as they are stored
(``dataset.image_size``, 1 or 3 channels): a grey image is repeated on the three colour channels
(the first convolution keeps its published weights) and every image is resized (bilinear) to the
network's input size inside the module, so training, test, ``metafsl predict`` and exported
files all see the same pipeline.  With published weights the input size and the normalisation are
those of the weights' metadata (torchvision ``weights.transforms()``, timm ``pretrained_cfg``); the
normalisation becomes the run's preprocessing (``input_normalization``, read by
``engine.components``, stored in the checkpoint).  With ``weights=none`` nothing changes from a
from-scratch backbone: the dataset's image size and ``dataset.normalize``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from metafsl.errors import UserError
from metafsl.models import with_out_features

#: hosts the published weights come from (probed before a download, so that an offline machine
#: answers at once instead of after the libraries' retries)
HOSTS = {"torchvision": "download.pytorch.org", "timm": "huggingface.co"}


class Pretrained(nn.Module):
    """A headless torchvision/timm network taking the run's images (see the module docstring)."""

    def __init__(self, body: nn.Module, source: str, arch: str, input_size: int,
                 normalization: Optional[Tuple[List[float], List[float]]], head: str):
        super().__init__()
        self.body = body
        self.source, self.arch, self.input_size, self.head = source, arch, int(input_size), head
        #: (mean, std) of the published weights, or None (the dataset's own choice)
        self.input_normalization = normalization

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                          align_corners=False)
        return self.body(x)

    def load_published(self, tag: str) -> None:
        """The published weights ``tag`` (``imagenet``: the architecture's default)."""
        from metafsl.models import published

        published.load(self, tag)


def metadata(weights: str, published: Callable[[str], Tuple[Any, int]]) -> Tuple[Any, Optional[int]]:
    """(normalisation or None, input size or None) that ``backbone.weights`` brings: a published
    tag's (``published(tag)``); a metafsl checkpoint's or run dir's own pipeline (its first
    stage's); another weight file, the architecture's default published weights' (a torchvision
    or timm state dict is taken for those); ``none``: nothing."""
    from metafsl.models.weights import run_preprocessing

    if weights == "none":
        return None, None
    if not _is_published(weights):
        pre = run_preprocessing(weights)
        if pre is None:
            return published("imagenet")
        norm = (pre["mean"], pre["std"]) if pre.get("mean") is not None else None
        return norm, pre.get("input_size")
    return published(weights)


def _measured(model: Pretrained, channels: int, image_size: int) -> Pretrained:
    """``with_out_features``; an input size the network refuses (a ViT's patches): one sentence."""
    try:
        return with_out_features(model, channels, image_size)
    except AssertionError as exc:
        raise UserError(f"{model.source}'s {model.arch} cannot take {model.input_size}x{model.input_size} "
                        f"inputs ({exc}); set backbone.input_size (e.g. 224).") from None


def _is_published(weights: str) -> bool:
    from metafsl.models.weights import is_file_spec

    return weights != "none" and not is_file_spec(weights)


# ----------------------------------------------------------------------------- torchvision
def torchvision_weights(arch: str, tag: str):
    """The torchvision weights enum member for ``tag`` (``imagenet``/``DEFAULT``: the default)."""
    from torchvision import models

    try:
        enum = models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise UserError(f"torchvision has no model '{arch}'; see torchvision.models.list_models() "
                        "for the names.") from None
    if tag in ("imagenet", "DEFAULT", "default"):
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        names = ", ".join(["imagenet", *enum.__members__])
        raise UserError(f"torchvision's {arch} has no weights '{tag}'; choose one of: {names}.") from None


def _torchvision_meta(arch: str, tag: str):
    t = torchvision_weights(arch, tag).transforms()
    return (list(t.mean), list(t.std)), int(t.crop_size[0])


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no linear classifier to remove; choose another backbone.model.")
    return names[-1]


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def torchvision_backbone(channels: int, image_size: int, model: str = "resnet18", weights: str = "none",
                         input_size: Optional[int] = None) -> nn.Module:
    """A torchvision classification model without its last linear layer (see the module docstring)."""
    from torchvision import models

    name = model
    if name not in models.list_models(module=models):
        raise UserError(f"torchvision has no classification model '{name}'; see "
                        "torchvision.models.list_models() for the names.")
    normalization, size = metadata(weights, lambda tag: _torchvision_meta(name, tag))
    size = int(input_size or size or image_size)
    kwargs = {"image_size": size} if name.startswith("vit_") else {}
    try:
        body = models.get_model(name, weights=None, **kwargs)
    except (ValueError, AssertionError) as exc:
        raise UserError(f"torchvision's {name} cannot be built for {size}x{size} inputs ({exc}); "
                        "set backbone.input_size (e.g. 224).") from None
    head = _last_linear(body)
    _replace(body, head, nn.Identity())
    return _measured(Pretrained(body, "torchvision", name, size, normalization, head), channels, image_size)


# ----------------------------------------------------------------------------- timm
def timm_model_name(name: str, weights: str) -> str:
    """``name`` or ``name.tag`` for a published tag (timm's naming of its weights)."""
    return f"{name.split('.')[0]}.{weights}" if _is_published(weights) and weights != "imagenet" else name


def timm_backbone(channels: int, image_size: int, model: str = "resnet10t", weights: str = "none",
                  input_size: Optional[int] = None) -> nn.Module:
    """Any timm model, ``num_classes=0`` (its pooled features; see the module docstring)."""
    import timm

    name = model
    full = timm_model_name(name, weights)
    if not timm.is_model(full.split(".")[0]):
        raise UserError(f"timm has no model '{name}'; see timm.list_models() for the names.")
    cfg = _timm_cfg(full)
    normalization, size = metadata(weights, lambda tag: ((list(cfg["mean"]), list(cfg["std"])),
                                                         int(cfg["input_size"][-1])))
    size = int(input_size or size or image_size)
    kwargs: Dict[str, Any] = {}
    if cfg.get("fixed_input_size") or size != cfg["input_size"][-1]:
        kwargs["img_size"] = size
    body = _create_timm(full, kwargs)
    wrapped = Pretrained(body, "timm", full, size, normalization, str(cfg.get("classifier", "head")))
    return _measured(wrapped, channels, image_size)


def _timm_cfg(full: str) -> Dict[str, Any]:
    import timm

    try:
        return dict(timm.create_model(full, pretrained=False, num_classes=0).pretrained_cfg)
    except RuntimeError as exc:  # an unknown tag
        raise UserError(f"timm cannot build '{full}' ({exc}).") from None


def _create_timm(full: str, kwargs: Dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(full, pretrained=False, num_classes=0, **kwargs)
    except TypeError:  # a model that does not take img_size: resized inside Pretrained instead
        return timm.create_model(full, pretrained=False, num_classes=0)
