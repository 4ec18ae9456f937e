"""MAML's meta-gradient as one compiled function of the meta-parameters (``runtime.compile``, CPU).

The learn2learn backend builds each task's graph in Python, module call by module call, and
differentiates it with autograd: on the CPU a meta-iteration is dominated by that overhead
(small convolutions, a second-order backward of hundreds of tiny ops).  Here one task's whole
computation -- the inner loop (support loss, ``torch.func.grad``, update, ``steps`` times), the
query loss of the adapted weights and its gradient w.r.t. the meta-parameters -- is one pure
function ``grad_and_value(task_loss)`` of the meta-parameters and the task's tensors, which
``torch.compile`` captures once (forward, inner loop, outer loss and backward in one graph) and
runs for every task of every meta-batch (same shapes: no recompilation).  With
``algo.backend=vmap`` the function is the vmap backend's whole meta-batch instead
(``batch_loss``: all tasks at once), with batch norm from plain ops as there.

MAML++'s options (l2l backend) are inputs of the same function, not constants:

- LSLR (``per_step_lr``): the learned rates ``step_lrs`` (steps x tensors) are a meta-parameter
  next to the weights (key ``STEP_LRS``), so they get their meta-gradient from the same call;
- MSL (``multi_step_loss``): the per-step weights of the query losses are a tensor argument
  (they change every iteration without a recompilation); after the MSL phase the function
  without them (the last step's loss only) is compiled once;
- derivative-order annealing (``first_order_until``): the first-order function until the switch,
  then the second-order one, compiled once at the switch;
- BNWB (``per_step_bn``): the per-step batch-norm rows are meta-parameters the inner loop leaves
  alone; each forward pass of the function gets the row of its network's step as a slice
  (``task_loss``), so the layers keep no step of their own inside it.

So a run compiles one function per (inner-loop order, multi-step loss) pair it meets: one for
plain MAML, two for the CPU presets (both schedules switch at the same iteration), each logged.

The meta-gradient is the learn2learn loop's (tests/test_maml_compiled.py compares them): the
same inner steps, differentiated through unless first order.  Batch norm uses each batch's
own statistics, as everywhere in metafsl's MAML.  With the l2l backend tasks are still taken one
at a time, so one task's graph is alive at a time, as in ``GradientLearner.meta_backward``, or
(``runtime.task_threads`` k > 1) k at a time, each on a thread of its own (``_each_task``).

Compiling takes from seconds (torch's on-disk cache is warm) to minutes (a first run) and needs
a C++ compiler for the CPU backend; both are logged (logger ``metafsl``), and when compilation
fails the learner says so in one line and goes on with its uncompiled loop (``None`` below).
Each compiled function's first result is also checked against the same function run uncompiled
on the same task (``_mismatch``): a compiler that gets the gradient wrong (torch.compile of
``torch.func`` transforms has silently done so, pytorch/pytorch#136662) is reported in one line
and not used.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from metafsl.algorithms import maml_vmap, per_step_bn
from metafsl.algorithms.base import accuracy

log = logging.getLogger("metafsl")

Params = Dict[str, torch.Tensor]
#: the meta-parameters' key of LSLR's learned rates (the model's own names start with a digit)
STEP_LRS = "step_lrs"


def task_loss(model: nn.Module, steps: int, lr: float, first_order: bool, meta: Params,
              weights: Optional[torch.Tensor], sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
              qy: torch.Tensor, step_rows: Tuple[str, ...] = ()) -> Tuple[torch.Tensor, torch.Tensor]:
    """One task's query loss after ``steps`` inner SGD steps from ``meta``'s weights (and the last
    step's logits).  Step size ``lr``, or with ``meta[STEP_LRS]`` (LSLR) its row of the step, one
    rate per tensor; ``weights`` (MSL): the weighted sum of the query losses after every step
    instead of the last one's.

    ``step_rows`` (MAML++'s per-step batch-norm weights and biases, ``per_step_bn``): the keys of
    tensors with one row per inner step that the inner loop leaves alone; a network that has
    taken ``k`` steps normalises with row ``min(k, rows - 1)``.  Each forward pass gets that row as
    a (1, C) slice, which the per-step layer (at its row 0: ``per_step_bn.set_step(model, 0)``)
    reads: no layer state changes inside the function, so it stays pure for torch.func and the
    compiler, and the meta-gradient reaches each row through its slice."""
    lrs = meta.get(STEP_LRS)
    position = {k: i for i, k in enumerate(k for k in meta if k != STEP_LRS)}  # LSLR's column of a tensor
    fixed = {k: meta[k] for k in step_rows}
    params = {k: p for k, p in meta.items() if k != STEP_LRS and k not in fixed}

    def network(p: Params, step: int) -> Params:
        """The parameters of the network that has taken ``step`` inner steps."""
        return {**p, **{k: rows[min(step, len(rows) - 1)].unsqueeze(0) for k, rows in fixed.items()}}

    def support_loss(p: Params, step: int) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, network(p, step), (sx,)), sy)

    def query_loss(p: Params, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(model, network(p, step), (qx,))
        return nn.functional.cross_entropy(logits, qy), logits

    loss: Optional[torch.Tensor] = None
    for step in range(steps):
        g = grad(support_loss)(params, step)
        rates = {k: lr if lrs is None else lrs[step, position[k]] for k in params}
        params = {k: p - rates[k] * (g[k].detach() if first_order else g[k]) for k, p in params.items()}
        if weights is not None:
            step_loss, logits = query_loss(params, step + 1)
            loss = weights[step] * step_loss if loss is None else loss + weights[step] * step_loss
    if weights is None:
        loss, logits = query_loss(params, steps)
    return loss, logits.detach()


def batch_loss(model: nn.Module, steps: int, lr: float, first_order: bool, params: Params,
               sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The mean query loss of a meta-batch (B, ...) adapted task by task under ``vmap`` (and the
    logits (B, Nq, n_way)); batch norm must compute its statistics from plain ops (``_plain_batch_norm``)."""

    def one_task(x, y, q):
        return functional_call(model, maml_vmap.adapt(model, params, x, y, steps, lr, first_order), (q,))

    logits = vmap(one_task)(sx, sy, qx)
    losses = nn.functional.cross_entropy(logits.transpose(1, 2), qy, reduction="none")
    return losses.mean(1).mean(), logits.detach()


class _PlainBatchNorm2d(nn.BatchNorm2d):
    """Batch norm from elementary ops (exact second derivatives under vmap, see ``maml_vmap``)."""

    forward = maml_vmap._batch_norm_with_batch_stats


@contextlib.contextmanager
def _plain_batch_norm(model: nn.Module) -> Iterator[None]:
    """Swap the class of ``model``'s BatchNorm2d layers while the batched function runs: the
    compiler traces the class's ``forward``, not an attribute set on the instance."""
    layers = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    for m in layers:
        m.__class__ = _PlainBatchNorm2d
    try:
        yield
    finally:
        for m in layers:
            m.__class__ = nn.BatchNorm2d


def task_gradient(model: nn.Module, steps: int, lr: float, first_order: bool, batched: bool = False,
                  step_rows: Tuple[str, ...] = ()) -> Callable:
    """``f(meta, weights, sx, sy, qx, qy) -> (gradients, (loss, logits))``: one task's meta-gradient
    (``task_loss``, with its per-step rows ``step_rows``), or (``batched``) ``f(params, sx, sy, qx,
    qy)``, the mean meta-gradient of a meta-batch."""
    if batched:
        return grad_and_value(functools.partial(batch_loss, model, steps, lr, first_order), has_aux=True)
    return grad_and_value(functools.partial(task_loss, model, steps, lr, first_order, step_rows=step_rows),
                          has_aux=True)


def inductor_options(backend) -> Optional[dict]:
    """Inductor's C++ wrapper: the compiled graph's kernels called from one C++ function instead
    of a Python line each.  On the Omniglot bench shape (meta-batch 32 of small tasks) a compiled
    meta-iteration took 0.41 s with it against 0.56 s without, in the same half-hour; on the
    20-way preset's (meta-batch 2, 3 steps) they were level (docs/benchmarks.md).  Where torch's
    own ``TORCHINDUCTOR_CPP_WRAPPER`` is set, it decides; other backends take no options."""
    if backend != "inductor" or "TORCHINDUCTOR_CPP_WRAPPER" in os.environ:
        return None
    return {"cpp_wrapper": True}


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` while the block runs (the pool's threads keep it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_cpp_extension():
    """Inductor's C++ build logs "No CUDA runtime is found" on every CPU-only machine: not news."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class CompiledMetaGradient:
    """``task_gradient`` compiled with ``torch.compile(backend=backend)`` at its first call, once
    per (first order, multi-step loss) variant met (``backend=None``: not compiled);
    ``meta_backward`` accumulates the mean over a meta-batch into the meta-parameters' ``.grad``
    (``step_lrs``: LSLR's learned rates, a meta-parameter too)."""

    def __init__(self, model: nn.Module, steps: int, lr: float, first_order: bool,
                 backend: Optional[str | Callable] = "inductor", batched: bool = False,
                 step_lrs: Optional[nn.Parameter] = None, task_threads: int = 1):
        self.model, self.steps, self.lr, self.first_order = model, steps, lr, first_order
        self.backend, self.batched, self.step_lrs = backend, batched, step_lrs
        # BNWB: the per-step batch-norm rows, fed to the function a row at a time (``task_loss``)
        self.step_rows = per_step_bn.row_names(model)
        # threads for compiled functions only: the uncompiled one runs ``functional_call``, which
        # swaps the shared module's parameters while it runs (not thread-safe)
        self.task_threads = 1 if batched or backend is None else max(1, int(task_threads))
        self._pool: Optional[ThreadPoolExecutor] = None
        self.functions: Dict[Tuple[bool, bool], Callable] = {}  # (first order, multi-step) -> function
        self.variant: Optional[Tuple[bool, bool]] = None  # the one the last meta-batch ran
        self.failed = False

    @property
    def ready(self) -> bool:
        """The last meta-batch's function is built (compiled unless ``backend`` is None)."""
        return self.variant in self.functions

    def _first_call(self, variant: Tuple[bool, bool], *args):
        eager = task_gradient(self.model, self.steps, self.lr, variant[0], self.batched, self.step_rows)
        if self.backend is None:  # the functional path uncompiled
            self.functions[variant] = eager
            return eager(*args)
        what = f"{'first' if variant[0] else 'second'} order{', multi-step loss' if variant[1] else ''}"
        if self.functions:  # a schedule of MAML++ switched (derivative order, multi-step loss)
            log.info("MAML's training schedule switched to %s: compiling its meta-gradient once more...", what)
        log.info("Compiling MAML's meta-gradient (%s) with torch.compile (backend %s): seconds with a warm "
                 "cache, minutes the first time...", what, self.backend)
        t = time.perf_counter()
        try:
            fn = torch.compile(eager, backend=self.backend, dynamic=False, options=inductor_options(self.backend))
            with _quiet_cpp_extension():
                out = fn(*args)
        except Exception as e:  # no C++ compiler, an unsupported platform or torch build: go on without
            self.failed = True
            e = getattr(e, "inner_exception", None) or e  # torch's BackendCompilerFailed: its cause
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            log.warning("runtime.compile: torch.compile is unavailable here (%s); MAML runs uncompiled.", reason)
            return None
        want = eager(*args)
        problem = _mismatch(out, want)
        if problem is not None and want[1][0].dtype == torch.float32:  # rounding, or a wrong graph?
            problem = _mismatch(out, want, self._in_float64(variant[0], args))
        if problem is not None:  # a miscompilation: never train on it
            self.failed = True
            log.warning("runtime.compile: the compiled meta-gradient is not the uncompiled one (%s); MAML runs "
                        "uncompiled.", problem)
            return None
        self.functions[variant] = fn
        log.info("MAML's meta-gradient compiled in %.0f s.", time.perf_counter() - t)
        return out

    def _in_float64(self, first_order: bool, args):
        """The uncompiled function's result for ``args`` in float64 (the float32 results' truth)."""
        model = copy.deepcopy(self.model).double()
        wide = [({k: v.double() for k, v in a.items()} if isinstance(a, dict) else
                 a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a) for a in args]
        return task_gradient(model, self.steps, self.lr, first_order, self.batched, self.step_rows)(*wide)

    def _call(self, *args):
        fn = self.functions.get(self.variant)
        return fn(*args) if fn is not None else self._first_call(self.variant, *args)

    def _meta_parameters(self) -> Dict[str, nn.Parameter]:
        named = dict(self.model.named_parameters())
        return named if self.step_lrs is None else {**named, STEP_LRS: self.step_lrs}

    def meta_backward(self, batch, first_order: Optional[bool] = None, weights: Optional[torch.Tensor] = None
                      ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """Add the meta-batch's mean meta-gradient to ``.grad``, first order or not (None: as built),
        with MSL's per-step ``weights`` (None: the last step's loss); (mean loss, mean accuracy),
        or None when compilation failed (the caller then runs its own loop; nothing was changed)."""
        if self.failed:
            return None
        self.variant = (self.first_order if first_order is None else bool(first_order), weights is not None)
        if self.batched:
            return self._batched_backward(batch)
        named = self._meta_parameters()
        meta = {k: p.detach() for k, p in named.items()}
        per_step_bn.set_step(self.model, 0)  # the layers read the row ``task_loss`` slices for them
        if weights is not None:
            weights = weights.to(device=batch.query_x.device, dtype=next(iter(meta.values())).dtype)
        outs = self._each_task(lambda i: self._call(meta, weights, batch.support_x[i], batch.support_y[i],
                                                    batch.query_x[i], batch.query_y[i]), len(batch))
        if outs is None:
            return None
        total: Optional[Params] = None
        losses, accs = [], []
        for i, (g, (loss, logits)) in enumerate(outs):
            if not torch.isfinite(loss):
                break
            total = g if total is None else {k: total[k] + g[k] for k in total}
            losses.append(loss.detach())
            accs.append(accuracy(logits, batch.query_y[i]))
        if total is not None:
            _add_grad(named, total, 1 / len(batch))
        if len(losses) < len(batch):  # a non-finite loss: the caller's divergence guard sees it
            return loss.detach(), accuracy(logits, batch.query_y[len(losses)])
        return torch.stack(losses).mean(), torch.stack(accs).mean()

    def _each_task(self, task: Callable[[int], Optional[tuple]], n: int) -> Optional[list]:
        """``[task(0), ..., task(n - 1)]``, or None when compilation failed.  With ``task_threads``
        k > 1 the tasks run on k threads of torch's threads // k intra-op threads each (torch's kernels,
        and the compiled ones, let go of the GIL): a meta-batch's small per-task graphs use the
        cores side by side instead of splitting each convolution over them.  The first call of a
        variant (its compilation and check) runs alone first; the sum keeps the task order."""
        if self.task_threads == 1 or n == 1:
            outs = []
            for i in range(n):
                outs.append(task(i))
                if outs[-1] is None:
                    return None
                if not torch.isfinite(outs[-1][1][0]):  # diverged: the rest is not needed
                    break
            return outs
        with _intra_op_threads(max(1, torch.get_num_threads() // self.task_threads)):
            first = [] if self.ready else [task(0)]
            if first and first[0] is None:
                return None
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.task_threads, thread_name_prefix="metafsl-maml-task")
            return first + list(self._pool.map(task, range(len(first), n)))

    def _batched_backward(self, batch) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        named = dict(self.model.named_parameters())
        with _plain_batch_norm(self.model):
            out = self._call({k: p.detach() for k, p in named.items()}, batch.support_x, batch.support_y,
                             batch.query_x, batch.query_y)
        if out is None:
            return None
        g, (loss, logits) = out
        if torch.isfinite(loss):
            _add_grad(named, g, 1.0)
        return loss.detach(), accuracy(logits, batch.query_y).mean()


def _mismatch(got, want, exact=None) -> Optional[str]:
    """Where a compiled call's loss or meta-gradient is off the uncompiled function's on the same
    task: a tensor's L2 error over its norm, or over 1e-2 of the whole gradient's norm where that
    is larger, above 1e-2 in float32, 1e-6 in float64 (far above the rounding of another summation
    order, far below a wrong graph); None where none is, or where the uncompiled loss is not
    finite (nothing to compare).  The floor is for a conv bias before batch norm: its exact
    gradient is zero, so both sides hold rounding noise only; in float32 second order that noise
    has reached 1.6e-5 of the whole gradient's norm (20-way Omniglot at iteration 2000), which a
    floor of 1e-3 flagged as a miscompilation.  What the floor lets pass in float32 is at most 1e-4 of the
    whole gradient's norm per tensor; a wrong graph is off by the gradient's own size.

    ``exact``: the same call in float64, for float32 results that fail the check above.  Both
    sides are then measured against it, and a tensor also passes where the compiled error is at
    most 10 times the uncompiled float32 function's own.  Rounding alone has gone past the floor:
    on the miniImageNet shape (84x84, 5 inner steps) the first conv bias's uncompiled float32
    gradient is 1.1e-3 of the whole norm off its float64 value (zero), the compiled one 8.0e-4."""
    (grads, (loss, _)), (ref_grads, (ref_loss, _)) = got, want
    if not torch.isfinite(ref_loss):
        return None
    tolerance = 1e-6 if ref_loss.dtype == torch.float64 else 1e-2
    true_grads, true_loss = (ref_grads, ref_loss) if exact is None else (exact[0], exact[1][0])
    floor = 1e-2 * float(torch.stack([g.norm() for g in true_grads.values()]).norm())
    for name, a, b, t, scale in [("loss", loss, ref_loss, true_loss, 0.0),
                                 *((k, grads[k], ref_grads[k], true_grads[k], floor) for k in true_grads)]:
        size = max(float(t.norm()), scale, torch.finfo(t.dtype).tiny)
        error = float((a.to(t.dtype) - t).norm()) / size
        own = 0.0 if exact is None else float((b.to(t.dtype) - t).norm()) / size  # the uncompiled rounding
        if not error <= max(tolerance, 10 * own):
            return f"{name}: relative error {error:.1e}" + ("" if exact is None else
                                                              f" (the uncompiled function's: {own:.1e})")
    return None


def _add_grad(named: Dict[str, nn.Parameter], grads: Params, scale: float) -> None:
    for k, p in named.items():
        update = grads[k] * scale
        p.grad = update if p.grad is None else p.grad + update
