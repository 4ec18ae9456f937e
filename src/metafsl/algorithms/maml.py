"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), via learn2learn's ``MAML``.

A linear head on the backbone; the inner loop takes ``inner_steps`` gradient steps of size
``inner_lr`` on the support loss (``test_inner_steps``/``test_inner_lr`` at test time); the
outer loss is the query loss of the adapted model, differentiated through the inner loop
(second order) or not (``first_order=true``: FOMAML).  Batch norm always uses the current
batch's statistics, as in Finn et al.'s implementation (no running averages).
``backend=vmap`` runs the same computation for all tasks of a meta-batch at once with
``torch.func`` (``metafsl.algorithms.maml_vmap``); ``backend=l2l`` is the per-task reference.

Two MAML++ options (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019), l2l
backend only:

- ``per_step_lr`` (LSLR): a learned inner learning rate per parameter tensor and per inner
  step, initialised at ``inner_lr`` and meta-learned with the weights; test-time steps use the
  rates of the same step index (``test_inner_lr`` is then not used).
- ``multi_step_loss`` (MSL): the outer loss is a weighted sum of the query losses after every
  inner step.  The weights start uniform (1/S each) and move linearly towards the last step
  over the first ``msl_iterations`` training iterations (non-final weights floor at 0.03/S, as
  in the MAML++ code); after that only the last step counts, as in plain MAML.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, List, Optional, Tuple

import torch
from torch import nn

from metafsl._l2l import learn2learn
from metafsl.algorithms import maml_vmap
from metafsl.algorithms.base import PerTaskAlgorithm, accuracy
from metafsl.data.sampler import TaskBatch
from metafsl.errors import UserError


def use_batch_statistics(module: nn.Module) -> None:
    """Make every batch-norm layer normalise with the current batch's statistics."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None


#: l2l: learn2learn's per-task clone/adapt loop (reference); vmap: all tasks at once (torch.func)
BACKENDS = ("l2l", "vmap")


class MAML(PerTaskAlgorithm):
    needs_grad_at_test = True

    def __init__(self, backbone: nn.Module, n_way: int, inner_lr: float = 0.4, inner_steps: int = 1,
                 test_inner_lr: Optional[float] = None, test_inner_steps: int = 3,
                 first_order: bool = False, backend: str = "l2l", per_step_lr: bool = False,
                 multi_step_loss: bool = False, msl_iterations: int = 7500):
        super().__init__(backbone)
        if backend not in BACKENDS:
            raise UserError(f"Unknown MAML backend '{backend}'; choose one of: {', '.join(BACKENDS)}.")
        if backend == "vmap" and (per_step_lr or multi_step_loss):
            raise UserError("The MAML++ options per_step_lr and multi_step_loss need algo.backend=l2l.")
        if multi_step_loss and int(msl_iterations) < 1:
            raise UserError(f"msl_iterations must be at least 1 (got {msl_iterations}).")
        self.backend = backend
        self.backprop_per_task = backend == "l2l"  # vmap: all tasks in one graph, one backward
        use_batch_statistics(backbone)
        self.n_way = n_way
        self.head = nn.Linear(backbone.out_features, n_way)
        self.inner_lr, self.inner_steps = float(inner_lr), int(inner_steps)
        self.test_inner_lr = float(inner_lr if test_inner_lr is None else test_inner_lr)
        self.test_inner_steps = int(test_inner_steps)
        self.first_order = bool(first_order)
        l2l = learn2learn()
        # The wrapper shares parameters with backbone/head (no copy).
        self.learner = l2l.algorithms.MAML(nn.Sequential(self.backbone, self.head),
                                           lr=self.inner_lr, first_order=self.first_order)
        self._maml_update = l2l.algorithms.maml.maml_update
        # MAML++ state exists only when its option is on, so other checkpoints keep their keys.
        self.step_lrs: Optional[nn.Parameter] = None
        if per_step_lr:
            n_tensors = len(list(self.learner.module.parameters()))
            steps = max(self.inner_steps, self.test_inner_steps)
            self.step_lrs = nn.Parameter(torch.full((steps, n_tensors), self.inner_lr))
        self.multi_step_loss, self.msl_iterations = bool(multi_step_loss), int(msl_iterations)
        if self.multi_step_loss:
            self.register_buffer("msl_iteration", torch.zeros((), dtype=torch.long))

    def check_episode(self, n_way: int, train: bool) -> None:
        if n_way != self.n_way:
            raise UserError(
                f"This MAML learner has a {self.n_way}-way output head; it cannot run {n_way}-way "
                f"episodes (train and test with the same n_way)."
            )

    def adapt(self, support_x, support_y, steps: int, lr: float, first_order: bool,
              after_step: Optional[Callable[[nn.Module], None]] = None):
        """A clone of the model after ``steps`` inner steps (``after_step(learner)`` after each)."""
        learner = self.learner.clone(first_order=first_order)
        learner.lr = lr
        for step in range(steps):
            loss = nn.functional.cross_entropy(learner(support_x), support_y)
            if self.step_lrs is None:
                learner.adapt(loss, first_order=first_order)
            else:  # LSLR: learn2learn's update with one learned rate per tensor for this step
                params = list(learner.parameters())
                grads = torch.autograd.grad(loss, params, create_graph=not first_order)
                self._maml_update(learner, 1.0, [r * g for r, g in zip(self.step_lrs[step], grads)])
            if after_step is not None:
                after_step(learner)
        return learner

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

    def _task_loss(self, batch: TaskBatch, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        # after the MSL phase (or one inner step) only the last step counts: plain MAML
        if not (self.multi_step_loss and self.training) or int(self.msl_iteration) >= self.msl_iterations:
            return super()._task_loss(batch, i)
        logits: List[torch.Tensor] = []
        self.adapt(batch.support_x[i], batch.support_y[i], self.inner_steps, self.inner_lr,
                   self.first_order, after_step=lambda learner: logits.append(learner(batch.query_x[i])))
        weights = self.msl_weights(self.inner_steps).tolist()  # all > 0 during the MSL phase
        loss = sum(w * nn.functional.cross_entropy(z, batch.query_y[i]) for w, z in zip(weights, logits))
        return loss, accuracy(logits[-1].detach(), batch.query_y[i])

    def meta_backward(self, batch: TaskBatch,
                      autocast: Callable[[], ContextManager] = contextlib.nullcontext
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        result = super().meta_backward(batch, autocast)
        if self.multi_step_loss:
            self.msl_iteration += 1  # one training iteration: advances the MSL schedule
        return result

    def task_query_logits(self, batch: TaskBatch, i: int) -> torch.Tensor:
        learner = self.adapt(batch.support_x[i], batch.support_y[i], self.inner_steps,
                             self.inner_lr, self.first_order)
        return learner(batch.query_x[i])

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.backend == "vmap":
            loss, logits = maml_vmap.meta_loss(self.learner.module, batch, self.inner_steps,
                                               self.inner_lr, self.first_order)
            return loss, accuracy(logits.detach(), batch.query_y).mean()
        return super().meta_loss(batch)

    def predict_proba(self, support_x, support_y, query_x, n_way: int) -> torch.Tensor:
        """Adapt to one labelled support set (test-time steps and rate), then softmax on the queries."""
        self.check_episode(n_way, train=False)
        with torch.enable_grad():
            learner = self.adapt(support_x, support_y, self.test_inner_steps, self.test_inner_lr,
                                 first_order=True)
        with torch.no_grad():
            return learner(query_x).softmax(-1)

    def evaluate(self, batch: TaskBatch) -> torch.Tensor:
        if self.backend == "vmap":
            logits = maml_vmap.query_logits_no_grad(self.learner.module, batch, self.test_inner_steps,
                                                    self.test_inner_lr)
            return accuracy(logits, batch.query_y)
        accs = []
        for i in range(len(batch)):
            with torch.enable_grad():
                learner = self.adapt(batch.support_x[i], batch.support_y[i], self.test_inner_steps,
                                     self.test_inner_lr, first_order=True)
            with torch.no_grad():
                accs.append(accuracy(learner(batch.query_x[i]), batch.query_y[i]))
        return torch.stack(accs)
