"""Gradient-based learners: a copy of the model is adapted to each task by gradient steps.

A ``GradientLearner`` has an output head of ``n_way`` classes and implements one hook,
``adapted_model(support_x, support_y, training)``: the model adapted to one task's support
set, a callable on query images.  ``training=True`` is the meta-training inner loop (its
result stays differentiable w.r.t. the meta-parameters where the method asks for it);
``training=False`` is test-time adaptation (the method's test steps and rates).  The
inner-loop settings the methods share (``inner_lr``, ``inner_steps``, ``test_inner_lr``,
``test_inner_steps``, ``first_order``) are set here, once; ``inner_loop_settings(training)``
picks those of meta-training or of test time.  From the hook:

- ``meta_loss``/``meta_backward``: the query loss of each adapted model; ``meta_backward``
  backpropagates task by task, so only one task's inner-loop graph is alive at a time (the
  same gradient as the batch mean, lower peak memory);
- ``fit`` (and so ``adapt``, evaluation and ``metafsl predict``): test-time adaptation;
- ``check_episode``: the head has ``n_way`` outputs, episodes must have as many classes;
- ``task_embedding`` (``metafsl tasks``): the change of the weights by test-time adaptation,
  adapted minus initial, flattened (``weight_change``; ANIL: its head only);
- ``fit_module`` (``metafsl export``): a copy of the network holding the adapted weights, from
  ``adapted_network`` (default: the learn2learn wrapper ``l2l_model`` after ``adapted_model``).

MAML, FOMAML and MAML++ (``maml``), Meta-SGD, ANIL and Reptile derive from it; the first four
adapt through learn2learn's ``MAML``/``MetaSGD`` wrappers (``clone()`` + ``adapt()``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Dict, NamedTuple, Optional, Tuple

import torch
from torch import nn

from metafsl.algorithms.base import Algorithm, Classifier, accuracy, class_count
from metafsl.algorithms.standalone import network_with
from metafsl.data.sampler import TaskBatch


def use_batch_statistics(module: nn.Module) -> None:
    """Make every batch-norm layer normalise with the current batch's statistics."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None


class InnerLoop(NamedTuple):
    """How one task's copy of the model is adapted: ``steps`` steps of size ``lr`` (None: the
    method's own rates), differentiated through (``first_order=False``) or not."""

    steps: int
    lr: Optional[float]
    first_order: bool


class GradientLearner(Algorithm):
    """A model adapted to each task by gradient steps (see the module docstring).

    Arguments:
        inner_lr: step size of the inner loop's gradient steps.
        inner_steps: inner-loop steps on each task's support set during meta-training.
        test_inner_lr: step size at test time; null: inner_lr.
        test_inner_steps: inner-loop steps on each task's support set at test time.
        first_order: drop second derivatives from the meta-gradient (FOMAML); test time is first order anyway.
    """

    adapts_with_gradients = True
    task_embedding_kind = "the change of the weights by test-time adaptation (adapted minus initial)"
    #: False when ``meta_loss`` builds one graph for the whole batch (MAML's vmap backend, Reptile)
    backprop_per_task: bool = True

    def __init__(self, backbone: nn.Module, n_way: int, *, inner_steps: int, test_inner_steps: int,
                 inner_lr: Optional[float] = None, test_inner_lr: Optional[float] = None,
                 first_order: bool = False):
        super().__init__(backbone)
        self.n_way = int(n_way)
        use_batch_statistics(backbone)  # as in Finn et al.'s code: no running averages
        self.inner_steps, self.test_inner_steps = int(inner_steps), int(test_inner_steps)
        self.inner_lr = None if inner_lr is None else float(inner_lr)
        self.test_inner_lr = self.inner_lr if test_inner_lr is None else float(test_inner_lr)
        self.first_order = bool(first_order)

    def inner_loop_settings(self, training: bool) -> InnerLoop:
        """Meta-training's inner loop, or test time's (first order: nothing differentiates it)."""
        if training:
            return InnerLoop(self.inner_steps, self.inner_lr, self.first_order)
        return InnerLoop(self.test_inner_steps, self.test_inner_lr, True)

    def adapted_model(self, support_x: torch.Tensor, support_y: torch.Tensor, training: bool) -> Classifier:
        """The model adapted to one task (see the module docstring)."""
        raise NotImplementedError

    def fit(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Classifier:
        return self.adapted_model(support_x, support_y, training=False)

    def adapted_network(self, support_x: torch.Tensor, support_y: torch.Tensor
                        ) -> Tuple[nn.Module, Dict[str, torch.Tensor]]:
        """The network and its weights after test-time adaptation (name -> tensor).  Default: the
        learn2learn wrapper ``l2l_model`` (MAML, Meta-SGD), adapted by ``adapted_model``."""
        clone = self.adapted_model(support_x, support_y, training=False)
        return self.l2l_model.module, dict(clone.module.named_parameters())

    def weight_change(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Each adapted tensor minus its initial value (name -> tensor), after test-time adaptation.
        Default: every weight of ``adapted_network`` against the network's own."""
        network, adapted = self.adapted_network(support_x, support_y)
        initial = dict(network.named_parameters())
        return {k: adapted[k] - initial[k] for k in initial}

    def task_embedding(self, support_x: torch.Tensor, support_y: torch.Tensor,
                       n_way: Optional[int] = None) -> torch.Tensor:
        """The change of the weights by test-time adaptation, flattened in name order: (D,)."""
        n_way = class_count(support_y) if n_way is None else n_way
        self.check_episode(n_way, train=False)
        with torch.enable_grad():
            change = self.weight_change(support_x, support_y)
        return torch.cat([change[k].detach().flatten() for k in sorted(change)])

    def fit_module(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> nn.Module:
        """A copy of the network with the weights adapted to the support set."""
        return network_with(*self.adapted_network(support_x, support_y))

    def task_loss(self, batch: TaskBatch, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Query loss and accuracy of task ``i`` after the training inner loop."""
        logits = self.adapted_model(batch.support_x[i], batch.support_y[i], training=True)(batch.query_x[i])
        return nn.functional.cross_entropy(logits, batch.query_y[i]), accuracy(logits.detach(), batch.query_y[i])

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        losses, accs = zip(*(self.task_loss(batch, i) for i in range(len(batch))))
        return torch.stack(losses).mean(), torch.stack(accs).mean()

    def meta_backward(self, batch: TaskBatch,
                      autocast: Callable[[], ContextManager] = contextlib.nullcontext
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Backpropagate each task's share of the mean loss as soon as it is computed."""
        if not self.backprop_per_task:
            return super().meta_backward(batch, autocast)
        losses, accs = [], []
        for i in range(len(batch)):
            with autocast():
                loss, acc = self.task_loss(batch, i)
            if not torch.isfinite(loss):
                return loss.detach(), acc
            (loss / len(batch)).backward()
            losses.append(loss.detach())
            accs.append(acc)
        return torch.stack(losses).mean(), torch.stack(accs).mean()
