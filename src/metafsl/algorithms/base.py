"""The contract every few-shot method keeps.

An ``Algorithm`` is an ``nn.Module`` holding all trainable state, with two verbs:

- training: ``meta_loss(batch)`` -> (loss, mean query accuracy) on a meta-batch of tasks, and
  ``meta_backward(batch)``, which adds the meta-gradient to ``.grad`` (by default
  ``meta_loss`` followed by ``backward()``); the training loop only calls ``meta_backward``;
- test time: ``adapt(support_x, support_y)`` returns a classifier for that one task, a callable
  from query images to logits (``n_query, n_way``).  Evaluation (``evaluate``), ``metafsl
  predict`` and the fast batched evaluation of metric learners all derive from it;
- task map: ``task_embedding(support_x, support_y)`` -> one vector (D,) describing the task
  (``metafsl tasks``): by default the mean of the class prototypes of the backbone's features;
  gradient learners give the change of their adapted weights, metric learners the mean prototype
  of their embedding; a method may override it with its own task representation;
- export (optional): ``adapt_module(support_x, support_y)`` returns the same classifier as a
  standalone, traceable ``nn.Module`` (``metafsl export``; see ``algorithms/standalone.py``),
  from the hook ``fit_module``, which each family base provides; a method that cannot says why
  in ``export_refusal``.

A method implements ``fit(support_x, support_y, n_way)`` (the classifier for one task) and
``meta_loss``; ``adapt`` wraps ``fit`` with the episode check and the right autograd mode.
``episode_logits(batch)`` is the test-time logits of a whole batch of tasks: by default
``fit`` task by task; a family may compute it batched, as long as it equals adapting task by
task (tests/test_contract.py checks this for every method, same seed, same numbers).

What a method can do is declared by class attributes, read by the engine and by the one
``check_episode``: ``n_way`` (set by methods with a fixed number of outputs),
``fewer_classes_ok`` (such a method also takes fewer classes), ``head_noun`` (how its
outputs are named in errors), ``adapts_with_gradients`` (it takes gradient steps at test
time; also keeps it off the channels-last memory format, see ``engine/runtime.py``),
``train_stream`` (what the engine draws for training: episodes, or labelled mini-batches of
``train_batch_size`` images; ``prepare_training(n_classes)`` comes first).

Family bases carry the shared parts: ``metric.MetricLearner`` (an embedding and a rule on
embeddings; batched evaluation embeds each distinct image once), ``gradient.GradientLearner``
(an inner loop per task: MAML, FOMAML, MAML++, Meta-SGD, ANIL, Reptile),
``transfer.TransferBaseline`` (Baseline, Baseline++) and ``sequence.SequenceLearner`` (MANN,
the meta-learner LSTM).  Algorithms know nothing about files, configs or the CLI.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable, ContextManager, Dict, Iterable, Literal, Mapping, Optional, Tuple

import torch
from torch import nn

from metafsl.algorithms.standalone import frozen
from metafsl.data.sampler import TaskBatch
from metafsl.errors import UserError

#: a classifier for one task: query images (Nq, C, H, W) -> logits (Nq, n_way)
Classifier = Callable[[torch.Tensor], torch.Tensor]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions along the last dim; keeps leading (task) dims."""
    return (logits.argmax(-1) == labels).float().mean(-1)


def class_count(support_y: torch.Tensor) -> int:
    """Number of classes of a support set labelled 0..n-1 (each label present at least once)."""
    n_way = int(support_y.max()) + 1
    if torch.unique(support_y).numel() != n_way or int(support_y.min()) != 0:
        raise ValueError("support labels must be 0..n_way-1, every class with at least one example")
    return n_way


def mean_prototype(embeddings: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """The mean of the class means (prototypes) of ``embeddings`` (Ns, D) labelled 0..n_way-1:
    (D,).  Every class weighs the same whatever its shots; invariant to the order of the rows."""
    sums = torch.zeros(n_way, embeddings.shape[-1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=n_way).clamp(min=1).to(embeddings.dtype)
    return (sums / counts[:, None]).mean(0)


def renamed_keys(state: Mapping[str, Any], renames: Dict[str, str]) -> Mapping[str, Any]:
    """``state`` (a state dict) with the key prefixes of ``renames`` (old -> new) replaced, its
    per-module metadata too."""
    def new(key: str) -> str:
        old = next((o for o in renames if key.startswith(o)), None)
        return key if old is None else renames[old] + key[len(old):]

    if not any(new(k) != k for k in state):
        return state
    out: Any = OrderedDict((new(k), v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # module prefixes, without the trailing dot
        out._metadata = OrderedDict((new(k + ".")[:-1] if k else k, v) for k, v in metadata.items())
    return out


class Algorithm(nn.Module):
    #: the number of classes this learner was built for, when fixed (an output head); None: any
    n_way: Optional[int] = None
    #: whether a learner with a fixed ``n_way`` also classifies fewer classes
    fewer_classes_ok: bool = False
    #: how the fixed outputs are named in errors; ``{n}`` is ``n_way``
    head_noun: str = "a {n}-way output head"
    #: whether adaptation takes gradient steps at test time (autograd on in ``adapt``)
    adapts_with_gradients: bool = False
    #: what the training loop draws (the engine builds it, ``engine.components.build_train_stream``):
    #: "episodes", meta-batches of tasks of the run's ``episode.train`` (``TaskBatch``; sequence
    #: learners read each episode as a sequence), or "batches", labelled mini-batches of
    #: ``train_batch_size`` images of all training classes (``LabelledBatch``, the transfer baselines)
    train_stream: Literal["episodes", "batches"] = "episodes"
    #: images per mini-batch of the "batches" stream
    train_batch_size: Optional[int] = None
    #: whether ``prepare_training_images`` is given the training split's images before training
    #: (SimpleShot's mean feature of the training classes); even a run of 0 iterations gets them
    sees_training_images: bool = False
    #: state-dict key prefixes renamed since (old -> new): checkpoints written before still load
    renamed_state_keys: Dict[str, str] = {}
    #: what ``task_embedding`` describes a task by (one clause, for ``metafsl tasks``)
    task_embedding_kind: str = "the mean of the class prototypes of the backbone's features"
    #: why ``adapt_module`` cannot give this method's classifier as a standalone network (one clause)
    export_refusal: str = "its classifier is not a network that can be written on its own"

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    # -- the method implements ----------------------------------------------------------
    def fit(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Classifier:
        """The classifier for one task: support (Ns, C, H, W), labels 0..n_way-1 (Ns,)."""
        raise NotImplementedError

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(loss, mean query accuracy) of a meta-batch, differentiable w.r.t. the parameters."""
        raise NotImplementedError

    def fit_module(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> nn.Module:
        """Optional: ``fit`` as an ``nn.Module`` of its own (see ``algorithms/standalone.py``);
        the family bases provide it.  Called in eval mode, with the autograd mode of ``adapt``."""
        raise UserError(f"{type(self).__name__} cannot be exported: {self.export_refusal}.")

    # -- derived --------------------------------------------------------------------------
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: Optional[int] = None) -> Classifier:
        """A classifier for the task given by a labelled support set (shots may differ per class).

        The classifier maps query images to logits without building a graph.  Test-time use:
        put the learner in ``eval()`` mode first.  ``n_way`` (default: counted from the labels,
        which must then be 0..n-1) spares a device synchronisation when the caller knows it."""
        n_way = class_count(support_y) if n_way is None else n_way
        self.check_episode(n_way, train=False)
        with torch.set_grad_enabled(self.adapts_with_gradients):
            classifier = self.fit(support_x, support_y, n_way)

        def classify(query_x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return classifier(query_x).detach()

        return classify

    def task_embedding(self, support_x: torch.Tensor, support_y: torch.Tensor,
                       n_way: Optional[int] = None) -> torch.Tensor:
        """One vector (D,) describing the task of a labelled support set (``metafsl tasks``),
        detached; the same D for every task of this learner and shot.  Default: the mean of the
        class prototypes of the backbone's features (``task_embedding_kind`` says what a method
        uses; a method with its own task representation overrides this).  Test-time use: put the
        learner in ``eval()`` mode first."""
        n_way = class_count(support_y) if n_way is None else n_way
        self.check_episode(n_way, train=False)
        with torch.no_grad():
            return mean_prototype(self.backbone(support_x).flatten(1), support_y, n_way).detach()

    def adapt_module(self, support_x: torch.Tensor, support_y: torch.Tensor,
                     n_way: Optional[int] = None) -> nn.Module:
        """``adapt``'s classifier as a standalone ``nn.Module`` (images -> logits, the same logits):
        copies of what it uses, eval mode, no gradients, batch statistics as plain operations, so
        that ``torch.jit.trace`` and the ONNX exporter can record it.  Raises ``UserError`` (one
        sentence) for a method that cannot."""
        n_way = class_count(support_y) if n_way is None else n_way
        self.check_episode(n_way, train=False)
        with torch.set_grad_enabled(self.adapts_with_gradients):
            module = self.fit_module(support_x, support_y, n_way)
        return frozen(module)

    def episode_logits(self, batch: TaskBatch) -> torch.Tensor:
        """Test-time query logits (B, Nq, n_way) of every task of ``batch`` (no graph kept)."""
        return torch.stack([self.adapt(batch.support_x[i], batch.support_y[i], batch.n_way)(batch.query_x[i])
                            for i in range(len(batch))])

    def evaluate(self, batch: TaskBatch) -> torch.Tensor:
        """Query accuracy (fraction) of each task of ``batch`` after adapting to its support set."""
        return accuracy(self.episode_logits(batch), batch.query_y)

    def meta_backward(self, batch: TaskBatch,
                      autocast: Callable[[], ContextManager] = contextlib.nullcontext
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add the meta-gradient of ``batch`` to ``.grad``; returns the (detached) loss and the
        mean query accuracy.  A non-finite loss is returned without backpropagating it."""
        with autocast():
            loss, acc = self.meta_loss(batch)
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach(), acc.detach()

    def check_episode(self, n_way: int, train: bool = False) -> None:
        """Raise ``UserError`` (one sentence) when this learner cannot classify ``n_way`` classes
        (``train``: training episodes; the rule is the same for both today)."""
        if self.n_way is None or n_way == self.n_way or (self.fewer_classes_ok and 2 <= n_way < self.n_way):
            return
        bound = "up to" if self.fewer_classes_ok else "exactly"
        advice = "" if self.fewer_classes_ok else " (train and test with the same n_way)"
        raise UserError(f"This {type(self).__name__} learner has {self.head_noun.format(n=self.n_way)}: it "
                        f"classifies {bound} {self.n_way} classes, got {n_way}{advice}.")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, older key names (``renamed_state_keys``) renamed first."""
        return super().load_state_dict(renamed_keys(state_dict, self.renamed_state_keys), strict=strict,
                                        assign=assign)

    def embed_episodes(self, batch: TaskBatch, forward=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass over all support and query images: (B, Ns, D), (B, Nq, D)
        (``forward``: another embedding of the images, e.g. averaged over test-time views)."""
        b, ns = batch.support_x.shape[:2]
        nq = batch.query_x.shape[1]
        z = (forward or self.backbone)(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
        return z[: b * ns].view(b, ns, -1), z[b * ns:].view(b, nq, -1)

    def prepare_training_images(self, batches: Iterable[torch.Tensor]) -> None:
        """Called once before training, after ``prepare_training``, when ``sees_training_images``:
        every image of the training split, preprocessed, in batches (N, C, H, W)."""

    def prepare_training(self, n_classes: int) -> None:
        """Called once before training starts (before the optimiser takes the parameters), with the
        number of training classes; a method whose parameters depend on it creates them here."""
