"""Evaluation on fixed episodes: accuracy in percent, mean ± 1.96·std/sqrt(n); a test adds macro
precision, recall and F1 (each episode's macro average over its classes, then the same mean ±
CI over episodes) and, for datasets with named classes, a per-class report.

In a ``torch.distributed`` run an evaluation is collective: every worker calls it alike, scores
one block of the episodes, and ends with all of them in order (``metafsl.engine.ranks``), so every
worker holds the numbers one process gets on the same episodes."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from metafsl.algorithms.metric import METRIC_LEARNERS, MetricLearner
from metafsl.algorithms.test_time import check_finetune, resolve_bn
from metafsl.algorithms.transductive import Transduction
from metafsl.algorithms.transfer import TransferBaseline
from metafsl.data.augment import mean_over_turns
from metafsl.data.base import FewShotSplit
from metafsl.data.sampler import EpisodeSampler, Preprocess
from metafsl.engine import episode_adapt, fast_eval, ranks
from metafsl.engine.callbacks import Callback
from metafsl.engine.metrics import MACRO, ClassReport, class_report, macro_per_episode
from metafsl.errors import UserError

#: upper bound on images per evaluation forward pass (keeps memory flat for big episodes)
MAX_IMAGES_PER_BATCH = 2400
#: datasets whose class names mean something to a person (the user's folders): their tests get a
#: per-class report (precision, recall, F1, support, confusion matrix)
NAMED_CLASSES = ("folder",)


def mean_ci95(accs: torch.Tensor) -> Dict[str, float]:
    n = accs.numel()
    mean = float(accs.mean())
    std = float(accs.std()) if n > 1 else 0.0
    return {"acc": mean, "ci95": 1.96 * std / math.sqrt(n), "episodes": n}


@dataclass(frozen=True)
class EvalSpec:
    """What an evaluation measures: the episode shape, how many episodes, and their seed."""

    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    seed: int
    batch_episodes: int = 16
    #: all classes of an episode from one alphabet / group
    within_group: bool = False
    #: the split's name (messages, progress bars)
    split: str = "test"
    #: a transductive rule over the episode's embeddings (``eval.transductive``; tests only)
    transductive: Optional[Transduction] = None
    #: test-time choices (``eval.bn``, ``eval.finetune_*``; a validation keeps the defaults)
    bn: str = "auto"
    finetune_steps: int = 0
    finetune_lr: float = 0.001
    #: the views fine-tuning classifies: ``flip_shift`` (P>M>F's) or ``train`` (``dataset.augment``)
    finetune_views: str = "flip_shift"
    #: test-time augmentation (``eval.tta``): embeddings averaged over this many fixed views
    #: (``metafsl.data.augment.tta_views``); 1: off
    tta: int = 1
    #: ``eval.tta_rotations``: class probabilities averaged over the episode turned by these many
    #: quarter turns (``metafsl.data.augment.rotation_turns``); 1: off
    tta_rotations: int = 1

    @property
    def per_episode(self) -> bool:
        """Whether each episode is adapted on its own (episode statistics or fine-tuning)."""
        return self.bn == "transductive" or self.finetune_steps > 0

    @classmethod
    def from_config(cls, cfg: Dict[str, Any], validation: bool = False) -> "EvalSpec":
        """A run's validation spec, or its test spec (on ``eval.split``)."""
        ep, ev = cfg["episode"], cfg["eval"]
        test = ep["test"]
        own = {} if validation else {k: ev[k] for k in ("bn", "finetune_steps", "finetune_lr", "finetune_views", "tta",
                                                               "tta_rotations")
                                    if k in ev}
        return cls(test["n_way"], test["n_shot"], test["n_query"],
                   episodes=cfg["trainer"]["val_episodes"] if validation else ev["episodes"],
                   seed=ev["seed"] + 1 if validation else ev["seed"], batch_episodes=ev["batch_episodes"],
                   within_group=bool(ep.get("within_alphabet", False)),
                   split="val" if validation else ev.get("split", "test"),
                   transductive=None if validation else transduction(ev), **own)

    def inference(self) -> Dict[str, Any]:
        """How the queries were classified, for the test record: ``inference`` (inductive or
        transductive), and for a transductive test its rule and the queries it saw at once."""
        if self.transductive is None:
            return {"inference": "inductive"}
        return {"inference": "transductive", "transductive": self.transductive.method,
                "query_batch": self.n_way * self.n_query}


def transduction(ev: Dict[str, Any]) -> Optional[Transduction]:
    """``eval.transductive``'s rule with its settings (``eval.<rule>``), or None."""
    method = ev.get("transductive", "none") or "none"
    return None if method == "none" else Transduction(method, dict(ev.get(method) or {}))


#: the learners whose test predictions are a function of each image's embedding alone, so that
#: ``eval.tta`` can average those embeddings over test-time views
TTA_LEARNERS = (MetricLearner, TransferBaseline)


def tta_refusal(tta: int, name) -> UserError:
    """The one sentence refusing ``eval.tta`` to a learner without per-image embeddings."""
    return UserError(f"eval.tta={tta} averages the image embeddings of a metric learner ({METRIC_LEARNERS}) "
                     f"or a transfer baseline (Baseline, Baseline++); {name} has none: use eval.tta=1.")


def tta_supported(algorithm) -> bool:
    """Whether ``eval.tta`` can average ``algorithm``'s image embeddings: a metric learner or a
    transfer baseline whose backbone embeds each image on its own (running batch-norm statistics)."""
    return fast_eval.supported(algorithm) or (isinstance(algorithm, TransferBaseline)
                                              and fast_eval.per_image(algorithm.backbone))


def check_transductive(cfg: Dict[str, Any]) -> None:
    """Refuse ``eval.transductive`` and ``eval.tta`` for a learner that is not a metric learner,
    before any work."""
    from metafsl.config import target_object

    ev = cfg.get("eval") or {}
    method = ev.get("transductive", "none") or "none"
    target = target_object(cfg["algo"]["_target_"])
    metric = isinstance(target, type) and issubclass(target, MetricLearner)
    if method != "none" and not metric:
        raise UserError(f"eval.transductive={method} needs a metric learner's embeddings ({METRIC_LEARNERS}), "
                        f"not {cfg['algo'].get('name', target)}.")
    embeds = isinstance(target, type) and issubclass(target, TTA_LEARNERS)
    if int(ev.get("tta", 1) or 1) > 1 and not embeds:
        raise tta_refusal(ev["tta"], cfg["algo"].get("name", target))


@dataclass
class EpisodePredictions:
    """Every query prediction of evaluated episodes: ``predicted`` and ``labels`` (E, n_way *
    n_query) are episode labels 0..n_way-1; ``classes`` (E, n_way) is the split's class id of
    each episode label."""

    predicted: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor

    def accuracies(self) -> torch.Tensor:
        """(E,) fraction of each episode's queries classified right."""
        return (self.predicted == self.labels).float().mean(-1)

    def split_ids(self, episode_labels: torch.Tensor) -> torch.Tensor:
        """Episode labels (E, Nq) mapped back to the split's class ids."""
        return self.classes.gather(1, episode_labels)


def scores(preds: EpisodePredictions) -> Dict[str, float]:
    """A test's numbers, in percent: accuracy and macro precision, recall, F1, each mean ± CI
    over the episodes."""
    out: Dict[str, float] = mean_ci95(preds.accuracies() * 100.0)
    macro = macro_per_episode(preds.predicted, preds.labels, preds.classes.shape[1])
    for name in MACRO:
        m = mean_ci95(macro[name] * 100.0)
        out[f"macro_{name}"], out[f"macro_{name}_ci95"] = m["acc"], m["ci95"]
    return out


def per_class(preds: EpisodePredictions, split: FewShotSplit) -> ClassReport:
    """Precision, recall, F1, support and confusion of each test class over all test queries."""
    return class_report(preds.split_ids(preds.labels), preds.split_ids(preds.predicted), split.class_names,
                        present_only=True)


def evaluate(algorithm, split: FewShotSplit, spec: EvalSpec, device="cpu", preprocess: Optional[Preprocess] = None,
             callbacks: Optional[Callback] = None, runtime=None) -> Dict[str, float]:
    """Accuracy (percent) of ``algorithm`` on ``split`` over the episodes ``spec`` describes (a
    validation)."""
    preds = predict_episodes(algorithm, split, spec, device, preprocess, callbacks, runtime)
    return mean_ci95(preds.accuracies() * 100.0)


def score_test(algorithm, split: FewShotSplit, spec: EvalSpec, device="cpu", preprocess: Optional[Preprocess] = None,
               callbacks: Optional[Callback] = None, runtime=None, dataset: str = ""
               ) -> Tuple[Dict[str, float], Optional[ClassReport]]:
    """A test: ``scores`` (accuracy and macro precision, recall, F1) of the episodes, and, when
    ``dataset`` (its name) has named classes (``NAMED_CLASSES``), the per-class report of all
    its queries, told to ``callbacks.on_class_report`` (else None)."""
    chosen = test_time_choices(algorithm, spec)
    preds = predict_episodes(algorithm, split, spec, device, preprocess, callbacks, runtime)
    report = per_class(preds, split) if dataset in NAMED_CLASSES else None
    if report is not None and callbacks is not None:
        callbacks.on_class_report(report)
    return {**scores(preds), **spec.inference(), **chosen}, report


def test_time_choices(algorithm, spec: EvalSpec) -> Dict[str, Any]:
    """What a test record says of its test-time choices: ``bn`` (the batch-norm statistics used,
    ``metafsl.algorithms.test_time``) and ``finetune`` (steps, lr) when fine-tuned; one sentence
    when the learner cannot use them."""
    name = type(algorithm).__name__
    chosen: Dict[str, Any] = {"bn": resolve_bn(algorithm, spec.bn, name)}
    check_finetune(algorithm, spec.finetune_steps, name)
    if spec.finetune_steps:
        chosen["finetune"] = {"steps": spec.finetune_steps, "lr": spec.finetune_lr,
                              **({"views": spec.finetune_views} if spec.finetune_views != "flip_shift" else {})}
    if spec.tta > 1:
        if spec.per_episode or not tta_supported(algorithm):
            raise UserError(f"eval.tta={spec.tta} needs a metric learner or a transfer baseline with running "
                            "batch-norm statistics and no per-episode adaptation (eval.bn=transductive, "
                            "eval.finetune_steps).")
        chosen["tta"] = spec.tta
    if spec.tta_rotations > 1:
        if spec.per_episode:
            raise UserError(f"eval.tta_rotations={spec.tta_rotations} classifies each episode again turned; it does "
                            "not combine with per-episode adaptation (eval.bn=transductive, eval.finetune_steps).")
        chosen["tta_rotations"] = spec.tta_rotations
    return chosen


def predict_episodes(algorithm, split: FewShotSplit, spec: EvalSpec, device="cpu",
                     preprocess: Optional[Preprocess] = None, callbacks: Optional[Callback] = None,
                     runtime=None) -> EpisodePredictions:
    """Every query prediction of ``algorithm`` on the episodes of ``split`` that ``spec`` describes.

    ``callbacks`` hear of the progress (``on_eval_start/advance/end``; in a torch.distributed
    run, rank 0's alone, told the progress of all); ``runtime``
    (``metafsl.engine.runtime.Runtime``) supplies the autocast context (GPU bf16).  In a
    torch.distributed run every worker must call it with the same arguments (a collective)."""
    n_way, n_shot, n_query = spec.n_way, spec.n_shot, spec.n_query
    sampler = EpisodeSampler(split, n_way, n_shot, n_query, device=device, seed=spec.seed, preprocess=preprocess,
                             within_group=spec.within_group, split_name=spec.split)
    algorithm.check_episode(n_way, train=False)
    if spec.transductive is not None and not isinstance(algorithm, MetricLearner):
        raise UserError(f"eval.transductive={spec.transductive.method} needs a metric learner's embeddings.")
    step = max(1, min(spec.batch_episodes, MAX_IMAGES_PER_BATCH // (n_way * (n_shot + n_query))))
    idx = sampler.indices(spec.episodes)  # (E, n_way, shot + query): the episodes, from the seed alone
    was_training = algorithm.training
    algorithm.eval()
    # in a torch.distributed run every worker scores its block of episodes; rank 0 shows the progress
    callbacks = callbacks if callbacks is not None and ranks.rank() == 0 else Callback()
    callbacks.on_eval_start(f"{spec.split} {n_way}w{n_shot}s", spec.episodes)
    autocast = runtime.autocast() if runtime is not None else contextlib.nullcontext()
    try:
        with autocast:
            predicted = _predict(algorithm, sampler, idx, spec, step, callbacks)
    finally:
        algorithm.train(was_training)
        callbacks.on_eval_end()
    labels = torch.arange(n_way).repeat_interleave(n_query).expand(len(idx), -1)
    return EpisodePredictions(predicted, labels, split.labels.cpu()[idx[:, :, 0]])


def _predict(algorithm, sampler: EpisodeSampler, idx: torch.Tensor, spec: EvalSpec, step: int,
             callbacks: Callback) -> torch.Tensor:
    """(E, Nq) predictions of the episodes ``idx`` by the path that fits the learner and ``spec``.

    Across the workers of a torch.distributed run (``metafsl.engine.ranks``) each scores one
    contiguous block of whole batches and the blocks are gathered in order: each episode is
    scored in the same batch, with the same random draws, as by one process."""
    fast = not spec.per_episode and fast_eval.supported(algorithm)
    if not spec.per_episode and not fast:
        step = _bounded_step(algorithm, sampler, idx, step)
    unit = step if not spec.per_episode and not fast else 1
    block = ranks.share(len(idx), unit)
    mine = idx[block]
    advance = _global_progress(callbacks.on_eval_advance, len(idx), len(mine))
    if not len(mine):  # more workers than batches: this one has none
        predicted = torch.zeros(0, sampler.n_way * sampler.n_query, dtype=torch.long)
    elif spec.per_episode:  # eval.bn=transductive, eval.finetune_steps: one episode at a time
        predicted = episode_adapt.episode_predictions(algorithm, sampler, mine, spec, advance, first=block.start)
    elif fast:  # metric methods: embed each distinct image once
        predicted = fast_eval.episode_predictions(algorithm, sampler, sampler.split.images, mine,
                                                  MAX_IMAGES_PER_BATCH, step, advance, spec.transductive, spec.tta,
                                                  spec.tta_rotations)
    else:
        predicted = _episode_loop(algorithm, sampler, mine, step, advance, spec.transductive,
                                  seed=spec.seed + block.start, tta=spec.tta, rotations=spec.tta_rotations)
    return ranks.gather_in_order(predicted, len(idx), unit)


def _batch_logits(algorithm, batch, rule: Optional[Transduction] = None, tta: int = 1) -> torch.Tensor:
    """The episode loop's logits of one batch (``_episode_loop`` says which)."""
    if rule is None and tta <= 1:
        return algorithm.episode_logits(batch)
    views = None if tta <= 1 else partial(fast_eval.embed_views, algorithm.backbone, tta=tta)
    with torch.no_grad():
        support, query = algorithm.embed_episodes(batch, views)
    return (rule or algorithm.logits_from_embeddings)(support, batch.support_y, query, batch.n_way)


def _global_progress(advance: Callable[[int], None], total: int, mine: int) -> Callable[[int], None]:
    """``advance`` told this worker's progress through its ``mine`` episodes as the progress of
    all ``total`` (the workers run at about the same pace); ``advance`` itself in one process."""
    if mine == total:
        return advance
    done = [0, 0]  # this worker's episodes scored, episodes shown

    def scaled(n: int) -> None:
        done[0] += n
        shown = done[0] * total // mine
        advance(shown - done[1])
        done[1] = shown

    return scaled


def _bounded_step(algorithm, sampler: EpisodeSampler, idx: torch.Tensor, step: int) -> int:
    """Episodes per batch of the episode loop on the CPU, bounded by the backbone's activation
    memory as the fast path bounds its passes (``fast_eval.images_per_pass``): a method that
    embeds a whole batch of episodes at once (TADAM, batched MAML) held 11 GB at 16 episodes of
    100 84x84 images."""
    backbone = getattr(algorithm, "backbone", None)
    if sampler.device.type != "cpu" or not isinstance(backbone, torch.nn.Module) or not len(idx):
        return step
    two = sampler.tasks(idx[:1]).support_x[0, :2]  # two images: batch norm on batch statistics needs two
    per_episode = idx.shape[1] * idx.shape[2]
    return max(1, min(step, len(two) * fast_eval.images_per_pass(backbone, two) // per_episode))


def _episode_loop(algorithm, sampler: EpisodeSampler, idx: torch.Tensor, step: int,
                  advance: Callable[[int], None], rule: Optional[Transduction] = None, seed: int = 0,
                  tta: int = 1, rotations: int = 1) -> torch.Tensor:
    """(E, Nq) predictions, adapting to each task (``episode_logits``; with a transductive
    ``rule``, that rule on the batch's embeddings; with ``tta`` > 1, ``logits_from_embeddings``
    of the embeddings averaged over that many views; with ``rotations`` > 1, the class
    probabilities averaged over the batch turned as ``eval.tta_rotations`` says), ``step`` episodes at a time; a learner's
    own random draws (MANN's support order, Reptile's test mini-batches, a transfer baseline's
    heads) in the batch of episodes ``i..`` come from the global generator seeded with
    ``seed + i``, then restored."""
    predicted = []
    for start in range(0, len(idx), step):
        batch = sampler.tasks(idx[start: start + step])
        with episode_adapt.seeded(seed + start, sampler.device):
            if rotations > 1:
                logits = mean_over_turns(partial(_batch_logits, algorithm, rule=rule, tta=tta), batch, rotations)
            else:
                logits = _batch_logits(algorithm, batch, rule, tta)
        predicted.append(logits.argmax(-1).cpu())
        advance(len(batch))
    return torch.cat(predicted) if predicted else torch.zeros(0, sampler.n_way * sampler.n_query, dtype=torch.long)
