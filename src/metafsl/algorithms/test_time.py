"""Test-time choices that apply to a trained learner as it is: which batch-norm statistics
normalise a test episode (``eval.bn``) and fine-tuning of a metric learner's backbone on the
support set (``eval.finetune_steps``, the last stage of P>M>F, Hu et al. CVPR 2022).

Batch norm at test time, by family (``own_bn``):

- ``inductive``: learners whose batch-norm layers keep running statistics (metric learners,
  Baseline/Baseline++, MANN) are evaluated in eval mode: every image is normalised with the
  statistics gathered during training, independently of the other test images;
- ``batch``: the MAML family (MAML, FOMAML, Meta-SGD, ANIL, Reptile) and Meta-LSTM keep no
  running statistics (Finn et al.'s convention, as learn2learn's examples): each forward pass is
  normalised with its own batch, the support set while adapting and the episode's queries
  together when classifying them;
- ``transductive`` (asked for): each episode's support and query images together give the
  statistics of every batch-norm layer of the backbone (``episode_statistics``); offered for
  learners with running statistics.

Fine-tuning (``finetune_backbone``): a few SGD steps (momentum 0.9) on the backbone, the loss
being the learner's own rule (ProtoNet: prototypes) built from the support embeddings and
applied to augmented views of the same support images (random flips and shifts, as P>M>F
does; ``eval.finetune_views=train``: the dataset's own training augmentation instead, e.g.
Koch et al.'s distortions for handwritten characters, whose mirror images can be other
characters); written here because it is a dozen lines on the learner's own ``embed`` and
``logits_from_embeddings``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import nn

from metafsl.errors import UserError

#: the values of ``eval.bn``: ``auto`` keeps each learner's own behaviour (``own_bn``)
BN_CHOICES = ("auto", "inductive", "transductive")


def _norm_layers(module: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def own_bn(algorithm: nn.Module) -> str:
    """What a learner does at test time without being asked: ``batch`` when its backbone's batch
    norm keeps no running statistics, else ``inductive`` (see the module docstring)."""
    layers = _norm_layers(algorithm.backbone)
    return "batch" if layers and all(m.running_mean is None for m in layers) else "inductive"


def resolve_bn(algorithm: nn.Module, bn: str, name: str = "this learner") -> str:
    """The batch-norm statistics a test uses (``auto``: the learner's own), or one sentence when
    the learner cannot use the ones asked for."""
    if bn not in BN_CHOICES:
        raise UserError(f"eval.bn must be one of: {', '.join(BN_CHOICES)} (got {bn!r}).")
    own = own_bn(algorithm)
    if bn == "auto" or bn == own:
        return own
    if own == "batch":
        raise UserError(f"eval.bn={bn} needs batch norm with running statistics, but {name} keeps none and "
                        "normalises each batch it forwards with that batch's statistics; use eval.bn=auto.")
    return bn


def check_finetune(algorithm: nn.Module, steps: int, name: str = "this learner") -> None:
    """Fine-tuning at test time is for metric learners (an embedding and a rule on it)."""
    from metafsl.algorithms.metric import METRIC_LEARNERS, MetricLearner

    if steps and not isinstance(algorithm, MetricLearner):
        raise UserError(f"eval.finetune_steps is for metric learners ({METRIC_LEARNERS}); {name} adapts to the "
                        "support set its own way, so leave it at 0.")


@contextlib.contextmanager
def episode_statistics(backbone: nn.Module, images: torch.Tensor) -> Iterator[None]:
    """Inside the block, every batch-norm layer of ``backbone`` that keeps running statistics
    normalises with the statistics (mean, biased variance) it sees when ``images`` (one episode's
    support and query images) pass through it together; the running statistics are put back
    afterwards.  Inside, the backbone maps ``images`` exactly as batch-statistics mode would."""
    layers = [m for m in _norm_layers(backbone) if m.running_mean is not None]
    saved = [(m, m.running_mean, m.running_var) for m in layers]
    seen: Dict[nn.Module, tuple] = {}

    def record(module, inputs, output):
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        seen[module] = (x.mean(dims).detach(), x.var(dims, unbiased=False).detach())

    handles = [m.register_forward_hook(record) for m in layers]
    try:
        for m in layers:
            m.running_mean = m.running_var = None  # eval mode without statistics: the batch's own
        with torch.no_grad():
            backbone(images)
        for m in layers:
            m.running_mean, m.running_var = seen[m]
        yield
    finally:
        for h in handles:
            h.remove()
        for m, mean, var in saved:
            m.running_mean, m.running_var = mean, var


def augment(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random views of normalised images (N, C, H, W): a horizontal flip with probability 1/2 and
    a shift of up to 1/8 of the size (reflected border)."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    dev = x.device
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.to(dev).view(n, 1, 1, 1), x.flip(-1), x)
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect" if pad < min(h, w) else "replicate")
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, a: a + h, b: b + w] for i, (a, b) in enumerate(zip(oy, ox))])


#: draws random views of a batch of images: (images, generator) -> images
Views = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


def finetune_backbone(algorithm, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int, steps: int,
                      lr: float, generator: Optional[torch.Generator] = None, views: Optional[Views] = None) -> None:
    """``steps`` SGD steps (momentum 0.9) on ``algorithm.backbone``, in place: the learner's rule
    built from the support embeddings classifies augmented views of the support images (``views``:
    ``augment``'s flips and shifts unless given), and its cross-entropy is the loss.  Batch norm
    stays as the learner is (eval mode: running statistics)."""
    views = views or augment
    params = list(algorithm.backbone.parameters())
    flags = [p.requires_grad for p in params]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    try:
        with torch.enable_grad(), torch.inference_mode(False):
            for p in params:
                p.requires_grad_(True)
            for _ in range(steps):
                rule = algorithm.embed(support_x)[None]
                seen = algorithm.embed(views(support_x, generator))[None]
                logits = algorithm.logits_from_embeddings(rule, support_y[None], seen, n_way)[0]
                loss = nn.functional.cross_entropy(logits.float(), support_y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def finetuned(algorithm, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int, steps: int, lr: float,
              generator: Optional[torch.Generator] = None, views: Optional[Views] = None) -> Iterator[None]:
    """Inside the block the backbone is fine-tuned on this support set (``finetune_backbone``);
    its original weights are restored afterwards, so episodes stay independent."""
    if steps <= 0:
        yield
        return
    saved = {k: v.detach().clone() for k, v in algorithm.backbone.state_dict().items()}
    try:
        finetune_backbone(algorithm, support_x, support_y, n_way, steps, lr, generator, views)
        yield
    finally:
        algorithm.backbone.load_state_dict(saved)
