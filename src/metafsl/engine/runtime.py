"""Runtime options (``runtime.*`` in the config): speed settings that leave the method alone.

- ``cpu_allocator_cache`` (on by default): on Linux/glibc, keep freed memory in the process
  instead of handing every large activation back to the kernel (``mallopt``: no ``mmap`` for
  big blocks, high trim threshold).  Without it a conv4 forward pass on a few hundred images
  spends as much time in page faults (``sys`` time) as in arithmetic.  Results are unchanged.
- ``channels_last`` (on by default, CPU and GPU, for methods without an inner loop to
  differentiate through): store conv weights and activations NHWC.  Same maths, only float
  rounding differs; faster conv4 training steps on the CPU (measured in docs/benchmarks.md).
- ``threads`` (``auto`` by default): CPU threads of this process.  ``auto`` leaves torch's
  default for a process alone on the machine, and gives each of ``W`` processes that share it
  ``cores // W`` threads (the parallel jobs of a ``metafsl sweep`` with ``hydra/launcher=joblib``):
  two trainings at once with the default threads each ran 2.6x slower than with one thread each
  on a 2-core machine, as their threads fought over the cores.
- ``compile`` (``auto`` by default; ``true``, ``false``): on the CPU, MAML's meta-training
  step (MAML++'s options included, not ``recompute_inner``) becomes one ``torch.compile``'d
  function per task (per meta-batch with ``algo.backend=vmap``)
  (``metafsl.algorithms.maml_compiled``: the same meta-gradient; inductor with its C++ wrapper
  unless torch's ``TORCHINDUCTOR_CPP_WRAPPER`` is set; the compile warm-up is logged,
  once more where derivative-order annealing or the multi-step loss switches, and a failed
  compilation falls back to the uncompiled loop with one log line).  ``auto`` does it for
  second-order MAML runs (derivative-order annealing counts: it ends second order) of at least
  ``AUTO_COMPILE_ITERATIONS`` iterations, where the warm-up (minutes with a cold cache) is paid
  back; other methods are left alone.  On the GPU,
  ``true`` wraps the backbone's forward with ``torch.compile`` in place (state-dict keys
  unchanged; ``auto`` leaves it off there).
- ``task_threads`` (1 by default): with MAML compiled on the CPU (l2l backend), the tasks of a
  meta-batch run on this many threads of ``threads / task_threads`` intra-op threads each
  (``maml_compiled.CompiledMetaGradient``; the same meta-gradient, summed in task order).  It
  pays where the tasks are small and many (Omniglot 5-way, meta-batch 32, 1 inner step: faster
  with 2 than with 1 on 2 cores) and costs where each task's convolutions are big enough to
  split over the cores (20-way, meta-batch 2, 3 steps: slower), so it is off unless asked for
  (docs/benchmarks.md).
- GPU option, a no-op on the CPU: ``amp=bf16`` runs forward passes under
  ``torch.autocast(dtype=bfloat16)`` (changes results slightly, so off by default).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch

from metafsl.errors import UserError

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_allocator_tuned: bool | None = None

AMP_CHOICES = ("off", "bf16")
#: ``runtime.compile=auto`` compiles CPU MAML for runs of at least this many iterations
AUTO_COMPILE_ITERATIONS = 5000

log = logging.getLogger(__name__)


def tune_cpu_allocator() -> bool:
    """Ask glibc to recycle large freed blocks instead of returning them to the kernel.

    Process-wide and idempotent; returns whether it applied (False off Linux/glibc).
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl and friends have no mallopt
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        _allocator_tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _allocator_tuned


def _to_channels_last(module, inputs, output):
    if output.dim() != 4:
        return output
    try:
        return output.contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # inside torch.func transforms (vmap) memory formats are not supported
        return output


def keep_channels_last(module: torch.nn.Module) -> list:
    """Make every conv layer of ``module`` return NHWC activations; returns the hook handles.

    With a 1-channel input PyTorch cannot tell NHWC from NCHW, so the first conv's output
    comes back NCHW, and the max-pool after it then runs on its slow NCHW path (an order of
    magnitude slower on the CPU here).  Converting conv outputs keeps the whole network NHWC.
    """
    return [m.register_forward_hook(_to_channels_last) for m in module.modules()
            if isinstance(m, torch.nn.Conv2d)]


@dataclass
class Runtime:
    device: torch.device
    amp: str = "off"
    channels_last: bool = True
    compile: Any = "auto"  # True | False | "auto"
    iterations: int = 0  # the run's training iterations (``compile=auto``)
    task_threads: int = 1  # CPU, compiled MAML: threads the tasks of a meta-batch run on

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """Context for forward passes: bf16 autocast on the GPU when asked, else nothing."""
        if self.on_gpu and self.amp == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, algorithm) -> None:
        """Apply the memory-format and compile options to ``algorithm`` (in place)."""
        # Methods that differentiate through an inner loop (MAML family) keep NCHW: on this
        # CPU their double backward ran ~10% slower channels-last (docs/benchmarks.md).
        if self.channels_last and not algorithm.adapts_with_gradients:
            algorithm.to(memory_format=torch.channels_last)
            keep_channels_last(algorithm)
        if not self.on_gpu:
            self._compile_cpu(algorithm)
            return
        if self.compile is True:
            backbone = getattr(algorithm, "backbone", None)
            if backbone is None:
                raise UserError("runtime.compile=true needs an algorithm with a backbone.")
            backbone.compile()


    def _compile_cpu(self, algorithm) -> None:
        """``compile`` on the CPU: MAML's compiled meta-gradient where it applies."""
        hook = getattr(algorithm, "compile_meta_gradient", None)
        if hook is None or self.compile is False:
            return
        if self.compile == "auto" and (algorithm.first_order or self.iterations < AUTO_COMPILE_ITERATIONS):
            return
        if hook(task_threads=self.task_threads):
            log.info("runtime.compile: MAML's meta-gradient will run compiled (torch.compile, CPU).")


def compile_setting(value: Any) -> Any:
    """``runtime.compile`` as True, False or "auto" (one sentence for anything else)."""
    if isinstance(value, bool) or value == "auto":
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise UserError(f"runtime.compile must be one of auto, true, false (got {value!r}).")


def from_config(cfg: dict[str, Any], device: torch.device) -> Runtime:
    """Build the runtime from ``cfg['runtime']`` (absent in older run configs: defaults)."""
    rc = dict(cfg.get("runtime") or {})
    amp = str(rc.get("amp", "off"))
    if amp not in AMP_CHOICES:
        raise UserError(f"Unknown runtime.amp '{amp}'; choose one of: {', '.join(AMP_CHOICES)}.")
    if rc.get("cpu_allocator_cache", True):
        tune_cpu_allocator()
    iterations = int((cfg.get("trainer") or {}).get("iterations", 0) or 0)
    return Runtime(device, amp, bool(rc.get("channels_last", True)), compile_setting(rc.get("compile", "auto")),
                   iterations, task_threads_setting(rc.get("task_threads", 1)))


def task_threads_setting(value: Any) -> int:
    """``runtime.task_threads`` as a whole number of at least 1 (one sentence for anything else)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"runtime.task_threads must be a whole number of at least 1, got {value!r}.")
    return value


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_for(setting: Any, processes: int = 1) -> Optional[int]:
    """Threads for one of ``processes`` processes sharing the machine: an integer setting as
    given; ``auto``: ``cores // processes`` (at least 1), or None (torch's default) for a
    process alone."""
    if str(setting) == "auto":
        return None if processes <= 1 else max(1, cpu_cores() // processes)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise UserError(f"runtime.threads must be auto or a whole number of at least 1, got {setting!r}.")
    return setting


def apply_threads(cfg: dict[str, Any], processes: int = 1) -> None:
    """Set torch's CPU threads from ``cfg['runtime']['threads']`` for one of ``processes`` (and
    check ``runtime.task_threads`` with it, before any work)."""
    task_threads_setting((cfg.get("runtime") or {}).get("task_threads", 1))
    threads = threads_for((cfg.get("runtime") or {}).get("threads", "auto"), processes)
    if threads is not None:
        torch.set_num_threads(threads)
