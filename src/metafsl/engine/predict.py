"""Classify new images with a trained run: adapt its learner once to a labelled support folder
(one sub-folder of images per class) and score query images in batches; the core of
``metafsl.api.predict`` and ``metafsl predict``.

Images are converted to the run's image size, channels and normalisation, taken from the
checkpoint alone (Omniglot runs invert dark-on-light drawings to the bright-ink form they were
trained on: ``invert=None`` decides by the dataset).  A colour image given to a grayscale model
is refused unless ``convert=True``.

The query set (folders, list files, globs: ``metafsl.engine.predict_inputs``) is read and
classified ``batch_size`` images at a time, so memory stays flat however many images there are; a query file that cannot be
read as an image is skipped and kept with its reason, while a support image that cannot be
read is an error (the support set defines the classes).  Each image gets the probabilities of
every support class, its ``top_k`` classes, and "unknown" when its top probability is below a
threshold (given, or calibrated on the support set: ``metafsl.engine.predict_reject``).

Methods whose batch norm uses the current batch's statistics (the MAML family, Reptile) classify
an image together with the others of its batch (transductively, as in their papers): their
probabilities depend on ``batch_size``; every other method's do not.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from metafsl.algorithms.metric import METRIC_LEARNERS, MetricLearner
from metafsl.algorithms.test_time import check_finetune, finetune_backbone
from metafsl.algorithms.transductive import RULES
from metafsl.algorithms.transfer import TransferBaseline
from metafsl.config import FINETUNE_VIEWS
from metafsl.data.augment import MAX_VIEWS
from metafsl.data.images import is_image, to_chw
from metafsl.engine import checkpoint, runtime
from metafsl.engine.callbacks import Callback, CallbackList
from metafsl.engine.components import build_learner, resolve_device
from metafsl.engine.episode_adapt import seeded
from metafsl.engine.evaluate import transduction, tta_refusal, tta_supported
from metafsl.engine.fast_eval import embed_views
from metafsl.engine.predict_inputs import gather, split_spec
from metafsl.engine.predict_reject import Calibration, calibrate, check_calibration_possible
from metafsl.engine.run_dir import find, write_text
from metafsl.errors import UserError

#: datasets metafsl presents with bright ink on a dark background (user drawings are the reverse)
INVERTED = {"omniglot"}
#: the answer for an image whose top probability is below the rejection threshold
UNKNOWN = "unknown"
#: the ``predicted`` value of a query file that could not be read (its reason in ``error``)
SKIPPED = "skipped"


class UnreadableImage(UserError):
    """A file that cannot be read as an image; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"Cannot read {path} as an image ({reason}).")
        self.path, self.reason = path, reason


def load_image(path: Path, size: int, channels: int, invert: bool, convert: bool) -> np.ndarray:
    """uint8 (channels, size, size) from an image file, with clear errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image file") from None
    except OSError as exc:
        raise UnreadableImage(path, f"cannot open it: {exc.strerror}" if exc.strerror
                              else "unreadable or corrupt image file") from None
    except ValueError:
        raise UnreadableImage(path, "unreadable or corrupt image file") from None
    colour = bool((np.abs(rgb[..., 0] - rgb[..., 1]).max() > 8) or (np.abs(rgb[..., 1] - rgb[..., 2]).max() > 8))
    if channels == 1 and colour and not convert:
        raise UserError(f"{path} is a colour image but this model was trained on grayscale (1-channel) "
                        f"images; pass convert=true to convert your images to grayscale.")
    if channels not in (1, 3):
        raise UserError(f"This run's images have {channels} channels; predict handles 1 or 3.")
    return to_chw(Image.fromarray(rgb.astype(np.uint8)), size, channels, invert)


def image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p.name))


def read_support(root: Path) -> Tuple[List[str], List[List[Path]]]:
    if not root.is_dir():
        raise UserError(f"support={root} is not a folder; give a folder with one sub-folder of images per class.")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UserError(f"support={root} needs at least 2 class sub-folders (found {len(classes)}).")
    files = []
    for c in classes:
        imgs = image_files(c)
        if not imgs:
            raise UserError(f"Support class '{c.name}' ({c}) has no images.")
        files.append(imgs)
    return [c.name for c in classes], files


def query_classes(query: str, queries: List[Path], names: List[str]) -> Optional[List[str]]:
    """The true class of each query when the query folder is labelled by sub-folders named like
    the support classes (``query/cat/*.png``, ``query/dog/*.png``): the sub-folder's name; None
    when any query is not inside such a sub-folder of a query folder."""
    roots = [Path(p) for p in split_spec(query) if Path(p).is_dir()]
    known, truth = set(names), []
    for q in queries:
        parts = next((q.relative_to(r).parts for r in roots if q.is_relative_to(r)), ())
        if len(parts) < 2 or parts[0] not in known:
            return None
        truth.append(parts[0])
    return truth


def load_learner(run: Path, which: str, device: torch.device):
    """The trained algorithm and the pixel pipeline of a run dir, from its checkpoint alone
    (checkpoints before version 2 carry no normalisation statistics: those reload the dataset)."""
    if not run.is_dir():
        raise UserError(f"Run dir {run} does not exist.")
    path = find(run, which)
    ck = checkpoint.load(path)
    cfg = ck["config"]
    pre = checkpoint.Preprocessing.from_checkpoint(ck) or _legacy_preprocessing(cfg)
    preprocess = pre.preprocess(cfg["dataset"].get("augment", "none"))  # the augmentation: fine-tuning's views
    algo = build_learner(cfg, pre.channels, pre.image_size, input_size=pre.input_size)
    checkpoint.load_weights(algo, ck["model"], path)
    return algo.to(device).eval(), preprocess, cfg, pre.channels, pre.image_size


def _legacy_preprocessing(cfg: Dict[str, Any]) -> checkpoint.Preprocessing:
    ds_cfg = cfg["dataset"]
    pre = checkpoint.Preprocessing(int(ds_cfg.get("image_size", 28)), int(ds_cfg.get("channels", 1)))
    if ds_cfg.get("normalize", "none") == "dataset":
        from metafsl.data import load_dataset

        stats = load_dataset(ds_cfg, cfg["paths"])  # cached: only its mean/std are used
        pre.mean, pre.std = list(stats.mean), list(stats.std)
    return pre



# ----------------------------------------------------------------------------- options
@dataclass
class PredictOptions:
    """How many images are scored at once, how many classes each row lists and when the answer
    is "unknown" (``predict.*`` on the command line)."""

    #: images read and classified at once (memory is about that many images' activations)
    batch_size: int = 256
    #: classes listed per image, best first; None: min(3, number of support classes)
    top_k: Optional[int] = None
    #: an image whose top probability is below this (0 < p < 1) is "unknown"
    reject_below: Optional[float] = None
    #: "auto": calibrate that threshold on the support set (leave-one-out); None: no rejection
    reject: Optional[str] = None
    #: a transductive rule (tim | bdcspn | ptmap | laplacianshot; metric learners) that classifies
    #: every query image together, with the run's ``eval.<rule>`` settings; "none": each on its own
    transductive: str = "none"
    #: SGD steps fine-tuning a metric learner's backbone on the support set before classifying
    #: (``eval.finetune_steps``); None: the run's own ``eval.finetune_steps`` (0 by default)
    finetune_steps: Optional[int] = None
    #: their learning rate; None: the run's ``eval.finetune_lr``
    finetune_lr: Optional[float] = None
    #: the views they classify (``flip_shift`` | ``train``); None: the run's ``eval.finetune_views``
    finetune_views: Optional[str] = None
    #: test-time augmentation (``eval.tta``, metric learners and transfer baselines): each image's
    #: embedding averaged over this many fixed views; None: the run's ``eval.tta`` (1: off)
    tta: Optional[int] = None

    def check(self) -> None:
        """One sentence for the first bad value (before any work)."""
        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        if not whole(self.batch_size):
            raise UserError(f"predict.batch_size must be an integer >= 1 (got {self.batch_size!r}).")
        if self.top_k is not None and not whole(self.top_k):
            raise UserError(f"predict.top_k must be an integer >= 1 (got {self.top_k!r}).")
        p = self.reject_below
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1):
            raise UserError(f"predict.reject_below must be a probability strictly between 0 and 1 (got {p!r}).")
        if self.reject not in (None, "auto"):
            raise UserError(f"predict.reject must be auto (got {self.reject!r}); "
                            "for a fixed threshold give predict.reject_below=<p>.")
        if self.reject is not None and p is not None:
            raise UserError("Give either predict.reject_below=<p> or predict.reject=auto, not both.")
        if self.transductive not in ("none", *RULES):
            raise UserError(f"predict.transductive must be one of none, {', '.join(RULES)} (got {self.transductive!r}).")
        if self.transductive != "none" and self.reject == "auto":
            raise UserError("predict.reject=auto calibrates each image classified on its own; with "
                            "predict.transductive give predict.reject_below=<p> instead.")
        if self.finetune_steps is not None and not (whole(self.finetune_steps) or self.finetune_steps == 0):
            raise UserError(f"eval.finetune_steps must be an integer >= 0 (got {self.finetune_steps!r}).")
        lr = self.finetune_lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise UserError(f"eval.finetune_lr must be a positive number (got {lr!r}).")
        if self.finetune_views not in (None, *FINETUNE_VIEWS):
            raise UserError(f"eval.finetune_views must be one of {', '.join(FINETUNE_VIEWS)} "
                            f"(got {self.finetune_views!r}).")
        if self.tta is not None and not (whole(self.tta) and self.tta <= MAX_VIEWS):
            raise UserError(f"eval.tta must be an integer from 1 to {MAX_VIEWS} (got {self.tta!r}).")

    def finetune(self, cfg: Dict[str, Any]) -> Tuple[int, float, str]:
        """(steps, lr, views) of the test-time fine-tuning: these options, else the run's ``eval``."""
        ev = cfg.get("eval") or {}
        steps = self.finetune_steps if self.finetune_steps is not None else ev.get("finetune_steps", 0)
        views = self.finetune_views or ev.get("finetune_views", "flip_shift")
        return int(steps), float(self.finetune_lr if self.finetune_lr is not None else ev.get("finetune_lr", 0.001)), views

    def views(self, cfg: Dict[str, Any]) -> int:
        """How many test-time views: this option, else the run's ``eval.tta``."""
        return int(self.tta if self.tta is not None else (cfg.get("eval") or {}).get("tta", 1) or 1)

    def k(self, n_classes: int) -> int:
        """The number of classes listed per image, checked against the support classes."""
        if self.top_k is None:
            return min(3, n_classes)
        if self.top_k > n_classes:
            raise UserError(f"predict.top_k={self.top_k} is more than the {n_classes} support classes.")
        return self.top_k


# ----------------------------------------------------------------------------- result
@dataclass
class Predictions:
    """Each classified query's probabilities of every support class (``probs``, rows in the
    order of ``queries``), the files skipped with their reason, and the rejection threshold."""

    names: List[str]
    queries: List[Path]
    probs: torch.Tensor
    support_files: List[List[Path]]
    algo: str
    #: (file, reason) of query files that could not be read as images, in the order met
    skipped: List[Tuple[Path, str]] = field(default_factory=list)
    #: classes listed per image (0: min(3, classes))
    top_k: int = 0
    #: top probability below which an image is "unknown" (None: no rejection)
    threshold: Optional[float] = None
    #: how ``predict.reject=auto`` chose ``threshold`` (None when it was given or not asked for)
    calibration: Optional[Calibration] = None
    #: files without an image extension in the walked folders and patterns, and files met twice
    ignored: int = 0
    duplicates: int = 0
    #: the transductive rule that classified all the queries together ("none": each on its own)
    transductive: str = "none"

    @property
    def best(self) -> Tuple[List[float], List[int]]:
        best_p, best = self.probs.max(-1)
        return best_p.tolist(), best.tolist()

    @property
    def predicted(self) -> List[str]:
        """Each query's answer: a support class name, or "unknown" (top probability below the threshold)."""
        best_p, best = self.best
        t = self.threshold
        return [UNKNOWN if t is not None and p < t else self.names[k] for p, k in zip(best_p, best)]

    @property
    def unknown(self) -> int:
        return self.predicted.count(UNKNOWN)

    @property
    def k(self) -> int:
        """Classes listed per image."""
        return self.top_k or min(3, len(self.names))

    def top(self) -> Tuple[List[List[float]], List[List[int]]]:
        """Per query, the ``k`` best probabilities and their class indices, best first."""
        values, indices = self.probs.topk(self.k, dim=-1)
        return values.tolist(), indices.tolist()

    def header(self) -> List[str]:
        tops = [c for i in range(1, self.k + 1) for c in (f"top{i}", f"top{i}_probability")]
        return ["file", "predicted", "probability", *tops, *[f"p_{n}" for n in self.names], "error"]

    def rows(self) -> List[List[Any]]:
        """The CSV rows: classified queries in order, then the skipped files (empty numbers, the reason)."""
        values, indices = self.top()
        rows = []
        for q, answer, row, vs, ks in zip(self.queries, self.predicted, self.probs.tolist(), values, indices):
            tops = [x for v, k in zip(vs, ks) for x in (self.names[k], round(v, 6))]
            rows.append([str(q), answer, round(vs[0], 6), *tops, *[round(x, 6) for x in row], ""])
        blanks = [""] * (len(self.header()) - 3)
        rows.extend([str(path), SKIPPED, *blanks, reason] for path, reason in self.skipped)
        return rows

    def write_csv(self, target: Path) -> None:
        """One row per query file: see ``header()`` and ``rows()``."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.header())
        w.writerows(self.rows())
        write_text(target, buf.getvalue(), what=f"the predictions to {target}")


# ----------------------------------------------------------------------------- work
Reader = Callable[[Path], np.ndarray]


def read_batch(paths: Sequence[Path], read: Reader) -> Tuple[List[np.ndarray], List[Path], List[Tuple[Path, str]]]:
    """(the images read, their paths, (path, reason) of the files that are not readable images)."""
    arrays, good, bad = [], [], []
    for path in paths:
        try:
            arrays.append(read(path))
            good.append(path)
        except UnreadableImage as exc:
            bad.append((path, exc.reason))
    return arrays, good, bad


def classify_batches(classify: Callable[[torch.Tensor], torch.Tensor], files: List[Path], read: Reader,
                     to_tensor: Callable[[List[np.ndarray]], torch.Tensor], batch_size: int,
                     callbacks: Callback, softmax: bool = True) -> Tuple[torch.Tensor, List[Path], List[Tuple[Path, str]]]:
    """Softmax probabilities of ``files`` (``softmax=False``: ``classify``'s outputs as they are),
    read and scored ``batch_size`` at a time; returns (probs, the files classified, the files
    skipped with why)."""
    probs: List[torch.Tensor] = []
    kept: List[Path] = []
    skipped: List[Tuple[Path, str]] = []
    callbacks.on_eval_start(f"predict {len(files)} images", len(files))
    try:
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            arrays, good, bad = read_batch(batch, read)
            skipped.extend(bad)
            if arrays:
                out = classify(to_tensor(arrays)).float()
                probs.append(out.softmax(-1).cpu() if softmax else out.cpu())
                kept.extend(good)
            callbacks.on_eval_advance(len(batch))
    finally:
        callbacks.on_eval_end()
    return (torch.cat(probs) if probs else torch.zeros(0, 0)), kept, skipped


def _check_support_names(names: List[str]) -> None:
    for reserved in (UNKNOWN, SKIPPED):
        if reserved in names:
            raise UserError(f"Support class folder '{reserved}' has a name predict uses for its own answers "
                            f"({UNKNOWN}: below the threshold, {SKIPPED}: unreadable file); rename the folder.")


def _prepare(algo, cfg: Dict[str, Any], device: torch.device) -> None:
    """The run's speed settings that leave results alone (allocator cache, channels-last)."""
    rt = runtime.from_config(cfg, device)
    runtime.Runtime(device, channels_last=rt.channels_last).prepare(algo)


def predict(run: Path, support: Path, query: Union[str, Path, Sequence[Union[str, Path]]], which: str = "best",
            device_name: str = "cpu", invert: Optional[bool] = None, convert: bool = False,
            options: Optional[PredictOptions] = None, callbacks: Optional[Callback] = None) -> Predictions:
    """Adapt the run's learner once to ``support`` and classify the query set in batches
    (``invert=None``: by the dataset; ``query``: see ``metafsl.engine.predict_inputs``)."""
    options = options or PredictOptions()
    options.check()
    callbacks = callbacks if callbacks is not None else CallbackList()
    device = resolve_device(device_name)
    algo, preprocess, cfg, channels, size = load_learner(run, which, device)
    steps, lr, draw_views, tta = test_time_choices(algo, preprocess, cfg, options)
    names, support_files = read_support(support)
    _check_support_names(names)
    top_k = options.k(len(names))
    if options.reject == "auto":
        check_calibration_possible(names, [len(f) for f in support_files])
    queries = gather(query)
    _prepare(algo, cfg, device)
    invert = cfg["dataset"]["name"] in INVERTED if invert is None else invert
    read: Reader = partial(load_image, size=size, channels=channels, invert=invert, convert=convert)

    def to_tensor(arrays: List[np.ndarray]) -> torch.Tensor:
        return preprocess(torch.from_numpy(np.stack(arrays)).to(device), train=False)

    support_x = to_tensor([read(p) for files in support_files for p in files])
    labels = torch.tensor([i for i, files in enumerate(support_files) for _ in files], device=device)
    if steps:  # P>M>F's last stage: the backbone tuned on this support set (a copy loaded for this call)
        finetune_backbone(algo, support_x, labels, len(names), steps, lr, torch.Generator().manual_seed(0),
                          draw_views)
    # what a learner draws at test time (a transfer baseline's head, MANN's support order, Reptile's
    # mini-batches) from a fixed seed: the same images get the same answers, call after call
    with seeded(0, device):
        calibration = calibrate(algo, support_x, labels, len(names), callbacks) if options.reject == "auto" else None
        probs, kept, skipped = _classify(algo, support_x, labels, len(names), queries.files, read, to_tensor,
                                         options, cfg, callbacks, tta)
    if not kept:
        skipped = queries.missing + skipped
        path, reason = skipped[0]
        raise UserError(f"Cannot read any of the {len(skipped)} query files as an image (e.g. {path}: {reason}).")
    return Predictions(names, kept, probs, support_files, cfg["algo"]["name"], queries.missing + skipped, top_k,
                       calibration.threshold if calibration else options.reject_below, calibration,
                       queries.ignored, queries.duplicates, transductive=options.transductive)


def test_time_choices(algo, preprocess, cfg: Dict[str, Any], options: PredictOptions):
    """(fine-tuning steps, their lr, their view drawer, test-time views) for ``algo``: these
    options, else the run's ``eval``; one sentence, before any image is read, for a choice the
    learner cannot take."""
    name = cfg["algo"]["name"]
    if options.transductive != "none" and not isinstance(algo, MetricLearner):
        raise UserError(f"predict.transductive={options.transductive} needs a metric learner's embeddings "
                        f"({METRIC_LEARNERS}), not {name}.")
    steps, lr, views = options.finetune(cfg)
    check_finetune(algo, steps, name)
    draw_views = preprocess.finetune_views(views) if steps else None
    tta = options.views(cfg)
    if tta > 1 and not tta_supported(algo):
        raise tta_refusal(tta, name)
    if tta > 1 and options.reject == "auto":
        raise UserError("predict.reject=auto calibrates on the support images without test-time views; "
                        f"with eval.tta={tta} give predict.reject_below=<p> instead (or eval.tta=1).")
    return steps, lr, draw_views, tta


def _classify(algo, support_x: torch.Tensor, labels: torch.Tensor, n_way: int, files: List[Path], read: Reader,
              to_tensor, options: PredictOptions, cfg: Dict[str, Any], callbacks: Callback, tta: int = 1):
    """(probs, the files classified, the files skipped): each query on its own (the learner adapted
    once), or, with ``options.transductive``, every query embedded batch by batch, then all
    classified together by the rule (the run's ``eval.<rule>`` settings); ``tta`` > 1: every
    embedding averaged over that many fixed views (``fast_eval.embed_views``)."""
    if options.transductive == "none":
        classify = algo.adapt(support_x, labels, n_way) if tta <= 1 else _view_classifier(algo, support_x, labels,
                                                                                          n_way, tta)
        return classify_batches(classify, files, read, to_tensor, options.batch_size, callbacks)
    rule = transduction({**cfg.get("eval", {}), "transductive": options.transductive})
    embed = algo.embed if tta <= 1 else partial(embed_views, algo.backbone, tta=tta)
    with torch.no_grad():
        support_z = embed(support_x)
        query_z, kept, skipped = classify_batches(embed, files, read, to_tensor, options.batch_size, callbacks,
                                                  softmax=False)
    if not kept:
        return query_z, kept, skipped
    scores = rule(support_z[None], labels[None], query_z[None].to(support_z.device), n_way)[0]
    return scores.softmax(-1).cpu(), kept, skipped


def _view_classifier(algo, support_x: torch.Tensor, labels: torch.Tensor, n_way: int, tta: int):
    """Query images -> logits of ``algo`` adapted once to the support embeddings averaged over
    ``tta`` views, the queries' averaged the same way (as ``metafsl test eval.tta`` scores
    episodes); a transfer baseline fits its head once, on those support embeddings."""
    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return embed_views(algo.backbone, x, tta)[None]

    support = embed(support_x)
    if isinstance(algo, TransferBaseline):
        head = algo.fit_heads(support, labels[None], n_way)
        return lambda x: algo.head_logits(head, embed(x), n_way)[0]
    return lambda x: algo.logits_from_embeddings(support, labels[None], embed(x), n_way)[0]
