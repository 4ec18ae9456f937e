"""Self-describing checkpoints, written atomically (temp file + fsync + rename).

A checkpoint holds everything needed to rebuild and use its learner without the dataset: the
resolved config, the weights, and the preprocessing (image size, channels, normalisation
mean/std).  A training checkpoint adds the ``TrainState`` (iteration, best, running sums) and
the optimiser, scheduler, sampler and RNG states.  Version 1 checkpoints (no preprocessing;
state as a plain dict) still load.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, List, Optional

import torch

from metafsl.engine.run_dir import replace_atomically, write_failed
from metafsl.errors import UserError

FORMAT = "metafsl-checkpoint"
VERSION = 2


@dataclass
class TrainState:
    """Where a training stands; saved in every checkpoint and restored on resume."""

    iteration: int = 0
    best_acc: Optional[float] = None
    best_iteration: int = 0
    last_val: Optional[float] = None
    #: the last iteration whose validation (and checkpoints) completed
    val_iteration: int = 0
    #: training seconds before this process (resumed runs)
    seconds: float = 0.0
    #: the end planned by the clock (trainer.fit_to_budget; 0: trainer.iterations)
    planned_iterations: int = 0
    #: running sums since the last logged training record
    loss_sum: float = 0.0
    acc_sum: float = 0.0
    count: int = 0

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainState":
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        if "val_iteration" not in data:  # version 1: checkpoints were written only after a validation
            state.val_iteration = state.iteration
        return state

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Preprocessing:
    """How images reach the learner: size, channels and the normalisation statistics."""

    image_size: int
    channels: int
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    #: the size a torchvision/timm backbone resizes the images to (its own business; recorded for a
    #: run initialised from this one, ``backbone.weights=<run>``)
    input_size: Optional[int] = None

    def preprocess(self, augment: str = "none"):
        """The test-time pipeline (uint8 -> float, this normalisation); ``augment`` only draws the
        views of test-time fine-tuning (``Preprocess.views``), never the test images themselves."""
        from metafsl.data.sampler import Preprocess

        return Preprocess(self.mean, self.std, augment)

    @classmethod
    def from_checkpoint(cls, ck: Dict[str, Any]) -> Optional["Preprocessing"]:
        data = ck.get("preprocessing")
        return cls(**data) if data else None


class _Recorder:
    """A file that remembers the first OSError of a write: torch's zip writer reports a write that
    failed (a full disk) as ``RuntimeError ... unexpected pos``."""

    def __init__(self, file: IO[bytes]):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.file.flush()


def _torch_save(obj: Dict[str, Any], file: IO[bytes]) -> None:
    recorder = _Recorder(file)
    try:
        torch.save(obj, recorder)
    except RuntimeError:
        if recorder.error is None:
            raise
        raise recorder.error from None


def save(path: Path, payload: Dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically; a failed write (a full disk, a read-only filesystem)
    keeps the previous file and is a UserError (no temp file left)."""
    path = Path(path)
    try:
        replace_atomically(path, lambda f: _torch_save({"format": FORMAT, "version": VERSION, **payload}, f),
                           binary=True)
    except OSError as exc:
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        raise write_failed(run_dir, str(path.relative_to(run_dir)), exc,
                           kept="the previous one is intact" if path.exists() else "") from None


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


def train_state(ck: Dict[str, Any]) -> TrainState:
    return TrainState.from_dict(ck.get("state") or {"iteration": ck.get("iteration", 0)})


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


def non_finite(named: Dict[str, torch.Tensor]) -> Optional[str]:
    """The name of the first floating-point tensor holding inf or NaN (None if all are finite)."""
    floats = [(n, t) for n, t in named.items() if t is not None and t.is_floating_point()]
    if not floats:
        return None
    # fast path, one sync: a sum is finite only if every element is (an overflowing sum of finite
    # values falls through to the exact per-tensor check)
    if bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for _, t in floats]).sum())):
        return None
    flags = torch.stack([torch.isfinite(t).all() for _, t in floats])
    return None if bool(flags.all()) else floats[int((~flags).nonzero()[0])][0]
