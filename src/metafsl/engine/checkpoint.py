"""Self-describing checkpoints, written atomically (temp file + fsync + rename)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch

from metafsl.errors import UserError

FORMAT = "metafsl-checkpoint"
VERSION = 1


def save(path: Path, payload: Dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: Path, map_location="cpu") -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(f"Checkpoint {path} is unreadable or corrupt ({exc.__class__.__name__}).") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a metafsl checkpoint.")
    return payload


def load_weights(module: torch.nn.Module, state: Dict[str, Any], path: Path) -> None:
    """``module.load_state_dict(state)``, with a mismatch reported as one user-facing sentence."""
    try:
        module.load_state_dict(state)
    except RuntimeError:
        own = module.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        resized = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for v, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (resized, "of another shape")) if v]
        raise UserError(f"Checkpoint {path} does not fit the model built from its config: weights "
                        f"{', '.join(parts) or 'differ'}; it was probably written by another version of "
                        f"metafsl or with other algo/backbone settings.") from None
