"""Initial weights of any backbone (``backbone.weights``) and a frozen backbone (``backbone.freeze``).

``backbone.weights`` is ``none`` (random initialisation), a published tag of a torchvision or timm
backbone (``imagenet`` or e.g. ``IMAGENET1K_V2`` / ``a1_in1k``: ``metafsl.models.published``), or a
file: a state dict in a ``.pth``/``.pt``/``.bin`` (``torch.load``, tensors only) or
``.safetensors`` file, a metafsl checkpoint, or a metafsl run dir (its best, else last,
checkpoint); from a checkpoint the learner's ``backbone.`` weights are taken, so that a run of
one method (Baseline's pre-training) initialises a run of another (ProtoNet, FEAT-like two-stage
training), for every backbone.  A torchvision/timm state dict with its classifier (a checkpoint of
the library itself) loads too: the classifier's weights are left out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from metafsl.errors import UserError

SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
#: what a metafsl checkpoint says it is (``metafsl.engine.checkpoint.FORMAT``; not imported: lower layer)
CHECKPOINT_FORMAT = "metafsl-checkpoint"


def is_file_spec(spec: str) -> bool:
    """Whether ``backbone.weights`` names a file or run dir rather than a published tag."""
    return "/" in spec or spec.startswith(("~", ".")) or Path(spec).suffix in SUFFIXES or Path(spec).exists()


def initialise(backbone: nn.Module, spec: str) -> None:
    """Load ``backbone.weights`` into ``backbone`` (see the module docstring)."""
    spec = str(spec)
    if spec == "none":
        return
    if is_file_spec(spec):
        load_state(backbone, read_state(Path(spec).expanduser()), spec)
    elif hasattr(backbone, "load_published"):
        backbone.load_published(spec)
    else:
        raise UserError(f"backbone.weights={spec}: {type(backbone).__name__} has no published weights; "
                        "give none or a weight file (.pth, .pt, .safetensors, a metafsl checkpoint or run dir).")


def run_preprocessing(spec: str) -> Optional[Dict[str, Any]]:
    """The ``preprocessing`` record of a metafsl checkpoint or run dir named by ``backbone.weights``
    (normalisation, input size: a second stage keeps the first stage's pipeline); None for
    another file (or one that cannot be read: ``initialise`` says so)."""
    path = Path(spec).expanduser()
    if path.suffix == ".safetensors" or not path.exists():
        return None
    try:
        payload = torch.load(_checkpoint_file(path) if path.is_dir() else path, map_location="cpu",
                             weights_only=True)
    except Exception:
        return None
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return dict(payload.get("preprocessing") or {})
    return None


#: the factories whose published weights ``metafsl.models.published`` fetches, by source
SOURCES = {"metafsl.models.pretrained.torchvision_backbone": "torchvision",
           "metafsl.models.pretrained.timm_backbone": "timm"}


def check_available(node: Dict[str, Any]) -> None:
    """Before any work: a weight file that does not exist, or published weights that are neither
    cached nor downloadable, is one sentence now rather than after the data is loaded."""
    spec = str(node.get("weights", "none"))
    if spec == "none":
        return
    if is_file_spec(spec):
        if not Path(spec).expanduser().exists():
            raise UserError(f"backbone.weights={spec}: no such file or run dir.")
        return
    source = SOURCES.get(str(node.get("_target_")))
    if source is not None:
        from metafsl.models import published

        published.check(source, str(node.get("model")), spec)


def _checkpoint_file(path: Path) -> Path:
    for name in ("best.pt", "last.pt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise UserError(f"backbone.weights={path} is a folder without checkpoints/best.pt or last.pt "
                    "(give a metafsl run dir or a weight file).")


def read_state(path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of a weight file, checkpoint or run dir (a checkpoint: its backbone's)."""
    if not path.exists():
        raise UserError(f"backbone.weights={path}: no such file or run dir.")
    path = _checkpoint_file(path) if path.is_dir() else path
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload = load_file(str(path))
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"backbone.weights={path} is not a readable weight file ({exc.__class__.__name__}).") from None
    return _tensors(payload, path)


def _tensors(payload, path: Path) -> Dict[str, torch.Tensor]:
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        state = {k[len("backbone."):]: v for k, v in payload["model"].items() if k.startswith("backbone.")}
        if not state:
            raise UserError(f"backbone.weights={path}: this checkpoint's method has no backbone weights.")
        return state
    for key in ("state_dict", "model"):  # the usual wrappers of a training script's checkpoint
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UserError(f"backbone.weights={path} holds no state dict (name -> tensor).")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in payload.items()}


def _fitted(backbone: nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A wrapped network's own state dict (no ``body.`` prefix, with its classifier) mapped onto
    ``Pretrained``'s keys, the classifier's weights left out."""
    head = getattr(backbone, "head", None)
    if head is None or any(k.startswith("body.") for k in state):
        return state
    return {f"body.{k}": v for k, v in state.items() if not (k == head or k.startswith(head + "."))}


def load_state(backbone: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """``backbone.load_state_dict(state)``; missing, unexpected or mis-shaped weights: one sentence."""
    state = _fitted(backbone, state)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if keys]
        raise UserError(f"backbone.weights={source} does not fit backbone {type(backbone).__name__} "
                        f"({'; '.join(parts)}): is it the same architecture and input channels?")
    backbone.load_state_dict(state)


def _stay_in_eval(module: nn.Module, args) -> None:
    if module.training:
        module.eval()


def freeze(backbone: nn.Module) -> nn.Module:
    """No gradients for the backbone's parameters, and eval mode (batch norm's running statistics,
    no dropout) in every forward pass, whatever mode the learner is put in."""
    backbone.requires_grad_(False)
    backbone.register_forward_pre_hook(_stay_in_eval)
    backbone.eval()
    return backbone
