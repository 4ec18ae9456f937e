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
