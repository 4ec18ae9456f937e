"""Evaluation of metric methods from one embedding per distinct image.

In evaluation mode a metric method's backbone embeds every image independently (batch norm uses
its running statistics), and the episode's logits depend on the images only through their
embeddings.  So instead of embedding the ``n_way * (n_shot + n_query)`` images of each of, say,
1000 episodes (80 000 images for 5-way 1-shot with 15 queries), we embed each *distinct* image
of those episodes once (about 31 000 on Omniglot's test split) and gather.  Same episodes, same
order, same per-episode accuracies up to float rounding of the embeddings.

A learner opts in by being a ``metafsl.algorithms.metric.MetricLearner``: it declares ``embed``
(its backbone) and ``logits_from_embeddings(support, support_y, query, n_way)`` (support
(B, Ns, D), query (B, Nq, D) -> logits (B, Nq, n_way)), from which its own evaluation derives
too.  A backbone whose batch norm has no running statistics falls back to the episode loop
(embeddings would depend on the batch).  In a torch.distributed evaluation each worker is given
its block of episodes and so embeds only the images those episodes hold.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from metafsl.algorithms.metric import MetricLearner
from metafsl.data.augment import mean_probabilities, rotation_turns, tta_views, turned
from metafsl.engine.runtime import keep_channels_last

#: images per embedding pass on the CPU: cache-friendly, and small enough for the allocator
#: to recycle activations (see metafsl.engine.runtime.tune_cpu_allocator)
CPU_IMAGES_PER_PASS = 1024
#: images in the example that ``frozen_for_inference`` traces: building from 1024 Omniglot images
#: cost as much as one eager pass of them, three passes of the frozen copy (docs/benchmarks.md),
#: while the frozen module embeds batches of any size, with the same speed and output whatever
#: the example's size; two, not one, so that no layer sees a batch of one
TRACE_EXAMPLE_IMAGES = 2
#: bound on the activation memory of one CPU embedding pass (a wide ResNet-12 on 84x84 images
#: needs ~14 MB per image: 1024 of them at once exhausted a 24 GiB machine)
CPU_PASS_BYTES = 1 << 30


def images_per_pass(backbone: nn.Module, one: torch.Tensor, budget: int = CPU_PASS_BYTES,
                    cap: int = CPU_IMAGES_PER_PASS) -> int:
    """How many images one inference pass may hold: ``budget`` over an upper estimate of one
    image's activation memory (the sum of every layer's output, as if none were freed)."""
    total = [one.numel()]

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in backbone.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            backbone(one)
    finally:
        for h in handles:
            h.remove()
    return int(max(1, min(cap, budget // (total[0] * one.element_size()))))


def per_image(module: nn.Module) -> bool:
    """True when ``module`` in eval mode maps each image independently of the rest of the batch."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            return False
    return True


def supported(algorithm) -> bool:
    """Metric learners (a declared capability) whose backbone embeds each image on its own."""
    return isinstance(algorithm, MetricLearner) and per_image(algorithm.backbone)


@contextlib.contextmanager
def channels_last_weights(module: nn.Module) -> Iterator[None]:
    """Temporarily store 4-D weights channels-last (faster convolutions on CPU and GPU); the
    original tensors are put back afterwards, untouched."""
    saved = []
    for p in module.parameters():
        if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
            saved.append((p, p.data))
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    hooks = keep_channels_last(module)
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for p, data in saved:
            p.data = data


def frozen_for_inference(backbone: nn.Module, example: torch.Tensor):
    """A TorchScript copy of ``backbone`` frozen and optimised for CPU inference (batch norm
    folded into the convolutions, fused conv+ReLU kernels): the same function up to float
    rounding, and faster (docs/benchmarks.md).  Falls back to ``backbone`` if it cannot be traced."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(backbone, example, check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    except Exception:  # an untraceable backbone: evaluate it eagerly
        return backbone


def episode_accuracies(algorithm, sampler, images: torch.Tensor, episodes: int, max_images: int,
                       episodes_per_step: int, on_progress=None) -> torch.Tensor:
    """Per-episode query accuracy (fraction) of ``episodes`` episodes drawn from ``sampler``
    (``episode_predictions`` of ``sampler.indices(episodes)``)."""
    predicted = episode_predictions(algorithm, sampler, images, sampler.indices(episodes), max_images,
                                    episodes_per_step, on_progress)
    labels = torch.arange(sampler.n_way).repeat_interleave(sampler.n_query)
    return (predicted == labels).float().mean(-1)


def embed_views(forward, x: torch.Tensor, tta: int = 1) -> torch.Tensor:
    """(N, D) embeddings of images ``x`` by ``forward``, averaged over the first ``tta`` fixed
    views of ``metafsl.data.augment.tta_views`` (test-time augmentation; 1: the images alone)."""
    if tta <= 1:
        return forward(x).flatten(1)
    views = tta_views(x, tta)
    return torch.stack([forward(v.contiguous()).flatten(1) for v in views]).mean(0)


def episode_predictions(algorithm, sampler, images: torch.Tensor, idx: torch.Tensor, max_images: int,
                        episodes_per_step: int, on_progress=None, rule=None, tta: int = 1,
                        rotations: int = 1) -> torch.Tensor:
    """Predicted label (0..n_way-1) of every query of the episodes ``idx``: (E, n_way * n_query),
    on the CPU, queries in the order of ``sampler.tasks(idx).query_y``.

    ``idx`` (E, n_way, n_shot + n_query) indexes ``images``, the split's uint8 tensor, as
    ``sampler.indices`` draws it; ``max_images`` bounds each embedding forward pass;
    ``on_progress(n)`` is called as episodes complete; ``rule`` (a transductive rule,
    ``metafsl.algorithms.transductive.Transduction``) replaces the learner's own
    ``logits_from_embeddings``; ``tta``: each embedding averaged over that many views (``embed_views``);
    ``rotations`` > 1: the class probabilities averaged over the episode turned as
    ``eval.tta_rotations`` says (``metafsl.data.augment.rotation_turns``; each turn embedded once).
    """
    device = sampler.device
    n_way, n_shot, n_query = sampler.n_way, sampler.n_shot, sampler.n_query
    uniq, inverse = torch.unique(idx, return_inverse=True)
    inverse = inverse.to(device)
    backbone = algorithm.backbone
    forward, max_images = _inference_forward(backbone, sampler, images, uniq, max_images)
    turns = rotation_turns(rotations)
    with torch.inference_mode(), channels_last_weights(backbone):
        chunks: list[list[torch.Tensor]] = [[] for _ in turns]
        for start in range(0, len(uniq), max_images):
            sel = uniq[start: start + max_images].to(images.device)
            x = sampler.preprocess(images[sel].to(device, non_blocking=True), False)
            for chunk, k in zip(chunks, turns):
                chunk.append(embed_views(forward, turned(x, k), tta))
        zs = [torch.cat(chunk) for chunk in chunks]  # one (N, D) per turn
        support_y = torch.arange(n_way, device=device).repeat_interleave(n_shot)
        classify = rule or algorithm.logits_from_embeddings
        predicted = []
        for start in range(0, len(idx), episodes_per_step):
            scores = []
            for z in zs:
                e = z[inverse[start: start + episodes_per_step]]  # (b, n_way, shot + query, D)
                b = e.shape[0]
                support = e[:, :, :n_shot].reshape(b, n_way * n_shot, -1)
                query = e[:, :, n_shot:].reshape(b, n_way * n_query, -1)
                scores.append(classify(support, support_y.expand(b, -1), query, n_way))
            if len(scores) > 1:  # eval.tta_rotations: the turns' class probabilities averaged
                scores = [mean_probabilities(scores)]
            predicted.append(scores[0].argmax(-1).cpu())
            if on_progress is not None:
                on_progress(b)
    return torch.cat(predicted) if predicted else torch.zeros(0, n_way * n_query, dtype=torch.long)


def _inference_forward(backbone: nn.Module, sampler, images: torch.Tensor, uniq: torch.Tensor, max_images: int):
    """(the embedding function, images per pass): on the CPU a frozen TorchScript copy and a pass
    size that fits the memory bound; elsewhere the backbone itself."""
    if sampler.device.type != "cpu":
        return backbone, max_images
    example = sampler.preprocess(images[uniq[:TRACE_EXAMPLE_IMAGES].to(images.device)], False)
    max_images = min(max_images, images_per_pass(backbone, example[:1]))
    return frozen_for_inference(backbone, example), max_images
