"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), via learn2learn's ``MAML``.

A linear head on the backbone; the inner loop takes ``inner_steps`` gradient steps of size
``inner_lr`` on the support loss (``test_inner_steps``/``test_inner_lr`` at test time); the
outer loss is the query loss of the adapted model, differentiated through the inner loop
(second order) or not (``first_order=true``: FOMAML).  Batch norm always uses the current
batch's statistics, as in Finn et al.'s implementation (no running averages).
``backend=vmap`` runs the same computation for all tasks of a meta-batch at once with
``torch.func`` (``metafsl.algorithms.maml_vmap``); ``backend=l2l`` is the per-task reference.
``runtime.compile`` (CPU) replaces the meta-training loop by one compiled function per task
(l2l) or per meta-batch (vmap) (``metafsl.algorithms.maml_compiled``, ``compile_meta_gradient``):
the same meta-gradient, the MAML++ options below included (not ``recompute_inner``).

Two MAML++ options (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019), l2l
backend only:

- ``per_step_lr`` (LSLR): a learned inner learning rate per parameter tensor and per inner
  step, initialised at ``inner_lr`` and meta-learned with the weights; test-time steps use the
  rates of the same step index (``test_inner_lr`` is then not used).  The update is
  learn2learn's ``maml_update`` with the rate-scaled gradients: its ``GBML`` transforms hold one
  transform per parameter for every step, which cannot express a rate per step.
- ``multi_step_loss`` (MSL): the outer loss is a weighted sum of the query losses after every
  inner step.  The weights start uniform (1/S each) and move linearly towards the last step
  over the first ``msl_iterations`` training iterations (non-final weights floor at 0.03/S, as
  in the MAML++ code); after that only the last step counts, as in plain MAML.

And MAML++'s derivative-order annealing (DA): ``first_order_until`` training iterations of
first-order meta-gradients (cheaper), then second order (``first_order`` must be false).

And MAML++'s per-step batch-norm weights and biases (BNWB), ``per_step_bn`` (l2l backend;
``metafsl.algorithms.per_step_bn``): every affine batch-norm layer of the backbone gets
``inner_steps + 1`` weight and bias vectors, all initialised from the layer's own; the network
that has taken k inner steps normalises with set k (the support pass of step k uses set k, the
query pass after step k set k + 1, the query pass after the last step the last set).  At test
time, steps beyond ``inner_steps`` (``test_inner_steps`` may be larger) keep the last set, the
one meta-trained for the adapted network.  The sets are meta-learned and, as in MAML++, stay out
of the inner loop, whereas plain MAML here adapts the batch-norm weights and biases in the inner
loop with the other weights: the option changes both.  (MAML++'s code keeps one set per step,
shared by the support pass of step k and the query pass after it; here the adapted network of
every step has its own.)  MAML++'s other batch-norm change, per-step running statistics (BNRS),
is not implemented, as it would change nothing meaningful here: batch norm normalises every
forward pass with its own batch's statistics (transductive, as Finn et al.), and so does MAML++'s
code, which accumulates per-step running averages but never normalises with them.  Normalising
with them instead would make test-time classification inductive (each query image normalised
with averages of training batches, independently of the other queries), a different evaluation
protocol, not a training improvement.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, List, Literal, Optional, Tuple

import torch
from torch import nn

from metafsl._l2l import learn2learn
from metafsl.algorithms import maml_compiled, maml_recompute, maml_vmap
from metafsl.algorithms import per_step_bn as per_step_bn_layers
from metafsl.algorithms.base import Classifier, accuracy
from metafsl.algorithms.gradient import GradientLearner
from metafsl.data.sampler import TaskBatch
from metafsl.errors import UserError


def _check_recompute(recompute: bool, backend: str, first_order: bool, maml_plus_plus: bool) -> None:
    """One sentence when ``recompute_inner`` is asked for where it does not apply."""
    if not recompute:
        return
    if backend != "l2l" or first_order or maml_plus_plus:
        raise UserError("algo.recompute_inner=true applies to second-order MAML with algo.backend=l2l and "
                        "without the MAML++ options (first order keeps no inner-loop graph to save).")


class MAML(GradientLearner):
    """MAML, FOMAML (``first_order=True``) and the MAML++ options (see the module docstring).

    Arguments:
        backend: l2l, learn2learn's per-task clone/adapt loop (the reference); vmap, all tasks of a
            meta-batch at once with torch.func (same gradients, faster).
        per_step_lr: MAML++ LSLR: a learned inner rate per tensor and per step, from inner_lr (l2l backend).
        multi_step_loss: MAML++ MSL: the query loss after every inner step, annealed to the last (l2l backend).
        msl_iterations: training iterations over which the multi-step loss anneals to the last step.
        first_order_until: MAML++ derivative-order annealing: first order for this many training
            iterations, then second order (0: off).
        per_step_bn: MAML++ BNWB: per-step batch-norm weights and biases, inner_steps + 1 sets, meta-learned
            and not adapted in the inner loop (l2l backend; the backbone needs batch-norm layers).
        recompute_inner: second order, l2l backend: recompute each inner step in the backward pass
            instead of keeping its activations (the same meta-gradient, far less memory, a little slower).

    Example:
        metafsl train algo=maml algo.backend=vmap algo.inner_steps=5 algo.test_inner_steps=10
    """

    renamed_state_keys = {"learner.": "l2l_model."}  # how checkpoints of 0.1.0 name it

    def __init__(self, backbone: nn.Module, n_way: int, inner_lr: float = 0.4, inner_steps: int = 1,
                 test_inner_lr: Optional[float] = None, test_inner_steps: int = 3,
                 first_order: bool = False, backend: Literal["l2l", "vmap"] = "l2l", per_step_lr: bool = False,
                 multi_step_loss: bool = False, msl_iterations: int = 7500, recompute_inner: bool = False,
                 first_order_until: int = 0, per_step_bn: bool = False):
        if backend == "vmap" and (per_step_lr or multi_step_loss or per_step_bn):
            raise UserError("The MAML++ options per_step_lr, multi_step_loss and per_step_bn need algo.backend=l2l.")
        _check_recompute(recompute_inner, backend, first_order, per_step_lr or multi_step_loss or per_step_bn)
        super().__init__(backbone, n_way, inner_lr=inner_lr, inner_steps=inner_steps, test_inner_lr=test_inner_lr,
                         test_inner_steps=test_inner_steps, first_order=first_order)
        self.backend = backend
        self.recompute_inner = bool(recompute_inner)
        self.backprop_per_task = backend == "l2l"  # vmap: all tasks in one graph, one backward
        self.head = nn.Linear(backbone.out_features, n_way)
        # BNWB: the backbone's batch-norm layers swapped for per-step ones before learn2learn wraps it
        self.per_step_bn = bool(per_step_bn)
        if self.per_step_bn and not per_step_bn_layers.swap_in(self.backbone, self.inner_steps + 1):
            raise UserError("algo.per_step_bn=true needs a backbone with batch-norm layers (weights and biases).")
        l2l = learn2learn()
        # learn2learn's wrapper of backbone + head: shares their parameters (no copy); clone() is
        # one task's copy of the model, adapt() its inner step
        self.l2l_model = l2l.algorithms.MAML(nn.Sequential(self.backbone, self.head),
                                             lr=self.inner_lr, first_order=self.first_order)
        self._maml_update = l2l.algorithms.maml.maml_update
        self.inner_mask = per_step_bn_layers.inner_loop_mask(self.l2l_model.module)  # BNWB: rows stay out
        # MAML++ state exists only when its option is on, so other checkpoints keep their keys.
        self.step_lrs: Optional[nn.Parameter] = None
        if per_step_lr:
            n_tensors = len(list(self.l2l_model.module.parameters()))
            steps = max(self.inner_steps, self.test_inner_steps)
            self.step_lrs = nn.Parameter(torch.full((steps, n_tensors), self.inner_lr))
        self.multi_step_loss, self.msl_iterations = bool(multi_step_loss), int(msl_iterations)
        if self.multi_step_loss:
            self.register_buffer("msl_iteration", torch.zeros((), dtype=torch.long))
        if first_order_until < 0 or (first_order_until and first_order):
            raise UserError("algo.first_order_until needs a non-negative count and algo.first_order=false.")
        self.first_order_until = int(first_order_until)
        if self.first_order_until:  # DA: training iterations seen (kept in checkpoints)
            self.register_buffer("da_iteration", torch.zeros((), dtype=torch.long))
        self.compiled: Optional[maml_compiled.CompiledMetaGradient] = None

    def inner_loop_settings(self, training: bool):
        """As ``GradientLearner``'s, first order during the derivative-order annealing phase."""
        settings = super().inner_loop_settings(training)
        if training and self.first_order_until and int(self.da_iteration) < self.first_order_until:
            return settings._replace(first_order=True)
        return settings

    def compile_meta_gradient(self, backend: str = "inductor", task_threads: int = 1) -> bool:
        """Meta-train with ``maml_compiled`` (``runtime.compile``; backend vmap: its batched
        function), LSLR, MSL and DA included, the tasks of a meta-batch on ``task_threads``
        threads (l2l backend), per-step batch norm too; False with recompute_inner."""
        if self.recompute_inner:
            return False
        self.compiled = maml_compiled.CompiledMetaGradient(self.l2l_model.module, self.inner_steps, self.inner_lr,
                                                           self.first_order, backend, batched=self.backend == "vmap",
                                                           step_lrs=self.step_lrs, task_threads=task_threads)
        return True

    def inner_loop(self, support_x, support_y, steps: int, lr: float, first_order: bool,
                   after_step: Optional[Callable[[nn.Module], None]] = None):
        """A clone of the model after ``steps`` inner steps (``after_step(model)`` after each)."""
        model = self.l2l_model.clone(first_order=first_order)
        model.lr = lr
        for step in range(steps):
            loss = nn.functional.cross_entropy(model(support_x), support_y)
            if self.step_lrs is None and not self.per_step_bn:
                model.adapt(loss, first_order=first_order)
            else:  # learn2learn's update, with the per-step BN rows left out (None) and LSLR's rates
                grads = per_step_bn_layers.inner_gradients(loss, list(model.parameters()), self.inner_mask,
                                                           first_order)
                if self.step_lrs is not None:  # LSLR: one learned rate per tensor for this step
                    grads = [None if g is None else r * g for r, g in zip(self.step_lrs[step], grads)]
                self._maml_update(model, 1.0 if self.step_lrs is not None else lr, grads)
            if self.per_step_bn:  # this clone has taken step + 1 steps: the BN set of that network
                per_step_bn_layers.set_step(model, step + 1)
            if after_step is not None:
                after_step(model)
        return model

    def _msl_phase(self) -> bool:
        """MSL weighs every inner step's query loss now: training, before ``msl_iterations``."""
        return self.multi_step_loss and self.training and int(self.msl_iteration) < self.msl_iterations

    def msl_weights(self, steps: int) -> torch.Tensor:
        """MAML++'s per-step loss weights at the current training iteration (they sum to 1)."""
        t = int(self.msl_iteration)
        if steps == 1 or t >= self.msl_iterations:
            return torch.nn.functional.one_hot(torch.tensor(steps - 1), steps).float()
        progress = t / self.msl_iterations
        floor = 0.03 / steps
        w = torch.full((steps,), max((1.0 - progress) / steps, floor))
        w[-1] = 1.0 - w[:-1].sum()
        return w

    def adapted_model(self, support_x, support_y, training: bool) -> Classifier:
        if training and self.recompute_inner and not self.inner_loop_settings(True).first_order:
            return maml_recompute.adapted(self.l2l_model.module, support_x, support_y, self.inner_steps,
                                          self.inner_lr)
        return self.inner_loop(support_x, support_y, *self.inner_loop_settings(training))

    def fit_module(self, support_x, support_y, n_way: int) -> nn.Module:
        """As ``GradientLearner``'s; with per-step BN, the copy normalises with the adapted network's set."""
        module = super().fit_module(support_x, support_y, n_way)
        per_step_bn_layers.set_step(module, self.test_inner_steps)  # no-op without per-step BN
        return module

    def task_loss(self, batch: TaskBatch, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        # after the MSL phase (or one inner step) only the last step counts: plain MAML
        if not self._msl_phase():
            return super().task_loss(batch, i)
        logits: List[torch.Tensor] = []
        self.inner_loop(batch.support_x[i], batch.support_y[i], *self.inner_loop_settings(training=True),
                        after_step=lambda model: logits.append(model(batch.query_x[i])))
        weights = self.msl_weights(self.inner_steps).tolist()  # all > 0 during the MSL phase
        loss = sum(w * nn.functional.cross_entropy(z, batch.query_y[i]) for w, z in zip(weights, logits))
        return loss, accuracy(logits[-1].detach(), batch.query_y[i])

    def meta_backward(self, batch: TaskBatch,
                      autocast: Callable[[], ContextManager] = contextlib.nullcontext
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        result = self._compiled_meta_backward(batch) if self.compiled is not None and self.training else None
        if result is None:  # not compiled, or compilation failed (logged)
            result = super().meta_backward(batch, autocast)
        if self.multi_step_loss:
            self.msl_iteration += 1  # one training iteration: advances the MSL schedule
        if self.first_order_until:
            self.da_iteration += 1
        return result

    def _compiled_meta_backward(self, batch: TaskBatch) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``maml_compiled``'s meta-gradient with this iteration's derivative order and, during the
        MSL phase (``_msl_phase``, as ``task_loss``), its per-step loss weights."""
        msl = self.inner_steps > 1 and self._msl_phase()
        weights = self.msl_weights(self.inner_steps) if msl else None  # one step: the last step's loss
        return self.compiled.meta_backward(batch, self.inner_loop_settings(True).first_order, weights)

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.backend == "vmap":
            loss, logits = maml_vmap.meta_loss(self.l2l_model.module, batch, self.inner_steps,
                                               self.inner_lr, self.inner_loop_settings(True).first_order)
            return loss, accuracy(logits.detach(), batch.query_y).mean()
        return super().meta_loss(batch)

    def episode_logits(self, batch: TaskBatch) -> torch.Tensor:
        if self.backend == "l2l":
            return super().episode_logits(batch)
        self.check_episode(batch.n_way, train=False)
        return maml_vmap.query_logits_no_grad(self.l2l_model.module, batch, self.test_inner_steps,
                                              self.test_inner_lr)
