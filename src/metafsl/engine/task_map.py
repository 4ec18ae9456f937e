"""A map of tasks (``metafsl tasks``): episodes embedded by the run's task encoder
(``Algorithm.task_embedding``), projected to 2-D, with each episode's nearest tasks.

Episodes: the run's test episodes, drawn as ``metafsl test`` draws them (``EvalSpec``, the same
seed: the first episodes of the map are the first episodes of a test).  When the split has
class groups (Omniglot's alphabets, FC100's superclasses) a fraction ``within`` of the episodes
is drawn within one group instead (``EpisodeSampler(within_group=True)``, same seed), so that
the map can show whether tasks of one alphabet lie together.  An embedding longer than
``MAX_DIMS`` (the weight change of a large network) is reduced to ``SKETCH_DIMS`` by a seeded
count sketch (each coordinate added, with a random sign, into one of ``SKETCH_DIMS`` buckets),
which keeps distances and inner products in expectation while the episodes' vectors fit in memory.  An episode's group is the name of
its classes' group when they share one, ``mixed`` when they do not, and the dataset's name for a
dataset without groups (which also names the domain of a run tested on another dataset).  A
user's task (a support folder) is placed on the map among episodes of the *training* split drawn
the same way, and its nearest training tasks are listed.

Projection: principal component analysis, written here (a few lines of ``torch.linalg.eigh``
on the episodes' Gram matrix, exact and deterministic; scikit-learn is not a dependency).  PCA
rather than t-SNE or UMAP: it is linear, so distances along its axes mean the same everywhere on
the map, and a new task (the user's) is placed with the same axes without refitting; t-SNE and
UMAP can neither place a new point nor keep distances between far clusters.  Nearest tasks are
found in the full embedding (Euclidean distance), not on the 2-D map.
"""
from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from metafsl.data.base import FewShotSplit
from metafsl.data.sampler import EpisodeSampler, Preprocess
from metafsl.engine.callbacks import Callback
from metafsl.engine.evaluate import EvalSpec

#: the group of an episode whose classes come from several groups
MIXED = "mixed"
#: the ``split`` and id of the user's own task on the map
USER = "user"
#: episodes embedded per sampler call
STEP = 16
#: embeddings longer than this are count-sketched to ``SKETCH_DIMS`` coordinates
MAX_DIMS, SKETCH_DIMS = 1 << 18, 1 << 16


class Sketch:
    """A seeded count sketch of vectors of any length to ``dims`` coordinates (the identity for
    vectors of at most ``limit`` coordinates); the same buckets and signs for every vector."""

    def __init__(self, dims: int = SKETCH_DIMS, limit: int = MAX_DIMS, seed: int = 0):
        self.dims, self.limit, self.seed = dims, limit, seed
        self.buckets: Optional[torch.Tensor] = None
        self.signs: Optional[torch.Tensor] = None
        self.used = False

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.numel() <= self.limit:
            return v
        if self.buckets is None or len(self.buckets) != v.numel():
            g = torch.Generator().manual_seed(self.seed)
            self.buckets = torch.randint(self.dims, (v.numel(),), generator=g).to(v.device)
            self.signs = (torch.randint(2, (v.numel(),), generator=g) * 2 - 1).to(v.device, v.dtype)
        self.used = True
        return torch.zeros(self.dims, dtype=v.dtype, device=v.device).index_add_(0, self.buckets, v * self.signs)


@dataclass
class Episodes:
    """Drawn episodes: image indices (E, n_way, shot + query), their group and class names."""

    split: str
    indices: torch.Tensor
    groups: List[str]
    classes: List[List[str]]
    samplers: List[Tuple[EpisodeSampler, slice]]

    @property
    def ids(self) -> List[str]:
        return [f"{self.split}-{i:04d}" for i in range(len(self.groups))]


@dataclass
class Projection:
    """PCA to 2-D: ``mean`` (D,), ``axes`` (D, 2) and the fraction of the variance each axis holds."""

    mean: torch.Tensor
    axes: torch.Tensor
    explained: Tuple[float, float]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) @ self.axes).float()


@dataclass
class TaskMap:
    """The map: one row per task (``ids``, ``splits``, ``xy`` (N, 2), ``groups``, ``classes``),
    the nearest tasks of a few test episodes and of the user's task, and what made it."""

    ids: List[str]
    splits: List[str]
    xy: torch.Tensor
    groups: List[str]
    classes: List[List[str]]
    #: (episode id, [(neighbour id, distance), ...]) for the first test episodes
    nearest: List[Tuple[str, List[Tuple[str, float]]]]
    #: the user's task's nearest training tasks (empty without a support folder)
    user_nearest: List[Tuple[str, float]]
    explained: Tuple[float, float]
    algo: str = ""
    embedding: str = ""
    title: str = ""
    dims: int = 0
    user_classes: List[str] = field(default_factory=list)
    #: the run dir the map was made from
    run: Optional[Path] = None
    #: whether the embeddings were count-sketched to ``dims`` coordinates (``Sketch``)
    sketched: bool = False

    def row(self, task_id: str) -> int:
        return self.ids.index(task_id)

    def csv_text(self) -> str:
        """``episode,split,x,y,group,classes`` (classes joined by ``;``)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["episode", "split", "x", "y", "group", "classes"])
        for i, (x, y) in enumerate(self.xy.tolist()):
            w.writerow([self.ids[i], self.splits[i], f"{x:.6g}", f"{y:.6g}", self.groups[i], ";".join(self.classes[i])])
        return buf.getvalue()

    def nearest_csv_text(self) -> str:
        """``episode,rank,neighbour,distance,neighbour_group,neighbour_classes``."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["episode", "rank", "neighbour", "distance", "neighbour_group", "neighbour_classes"])
        listed = list(self.nearest) + ([(USER, self.user_nearest)] if self.user_nearest else [])
        for task, neighbours in listed:
            for rank, (other, d) in enumerate(neighbours, start=1):
                j = self.row(other)
                w.writerow([task, rank, other, f"{d:.6g}", self.groups[j], ";".join(self.classes[j])])
        return buf.getvalue()


# ----------------------------------------------------------------------------- episodes
def episode_group(split: FewShotSplit, classes: torch.Tensor, dataset: str) -> str:
    """The group name shared by ``classes`` (class ids), ``MIXED``, or ``dataset`` without groups."""
    if split.groups is None:
        return dataset
    gids = torch.unique(split.groups.cpu()[classes])
    if len(gids) > 1:
        return MIXED
    g = int(gids[0])
    return split.group_names[g] if split.group_names else f"group {g}"


def draw(split: FewShotSplit, spec: EvalSpec, within: float, dataset: str, device, preprocess: Preprocess,
         name: str) -> Episodes:
    """``spec.episodes`` episodes of ``split``: the first as ``metafsl test`` draws them, the last
    ``within`` fraction within one group (when the split has groups)."""
    n_within = int(round(within * spec.episodes)) if split.groups is not None and not spec.within_group else 0
    plain = spec.episodes - n_within
    parts = []
    for count, grouped in ((plain, spec.within_group), (n_within, True)):
        if count:
            sampler = EpisodeSampler(split, spec.n_way, spec.n_shot, spec.n_query, device=device, seed=spec.seed,
                                     preprocess=preprocess, within_group=grouped, split_name=name)
            parts.append((sampler, sampler.indices(count)))
    indices = torch.cat([idx for _, idx in parts])
    labels = split.labels.cpu()[indices[:, :, 0]]  # (E, n_way) class ids
    samplers, start = [], 0
    for sampler, idx in parts:
        samplers.append((sampler, slice(start, start + len(idx))))
        start += len(idx)
    return Episodes(name, indices, [episode_group(split, c, dataset) for c in labels],
                    [[split.class_names[int(k)] for k in c] for c in labels], samplers)


def embed(algorithm, episodes: Episodes, callbacks: Callback, label: str, sketch: Sketch) -> torch.Tensor:
    """(E, D) task embeddings of ``episodes`` (float32, on the CPU; ``sketch``ed), with progress."""
    out: List[torch.Tensor] = []
    callbacks.on_eval_start(label, len(episodes.groups))
    try:
        for sampler, part in episodes.samplers:
            idx = episodes.indices[part]
            for start in range(0, len(idx), STEP):
                batch = sampler.tasks(idx[start:start + STEP])
                out += [sketch(algorithm.task_embedding(batch.support_x[i], batch.support_y[i], batch.n_way)
                               .float()).cpu() for i in range(len(batch))]
                callbacks.on_eval_advance(len(batch))
    finally:
        callbacks.on_eval_end()
    return torch.stack(out)


# ----------------------------------------------------------------------------- geometry
def pca(x: torch.Tensor) -> Projection:
    """The two principal axes of the rows of ``x`` (N, D), from the N x N Gram matrix (cheap when
    D, e.g. a network's weight count, is much larger than N); each axis's sign makes its largest
    loading positive, so the map does not flip between runs."""
    x = x.double()
    mean = x.mean(0)
    xc = x - mean
    values, vectors = torch.linalg.eigh(xc @ xc.T)  # ascending
    values, vectors = values.flip(0)[:2].clamp(min=0), vectors.flip(1)[:, :2]
    axes = torch.zeros(x.shape[1], 2, dtype=torch.float64)
    for k in range(min(2, len(values))):
        if values[k] > 1e-12 * max(float(values[0]), 1e-300):
            a = xc.T @ vectors[:, k] / values[k].sqrt()
            axes[:, k] = a * torch.sign(a[a.abs().argmax()])
    total = float((xc ** 2).sum())
    explained = tuple(float(v) / total if total > 0 else 0.0 for v in values.tolist() + [0.0] * (2 - len(values)))
    return Projection(mean, axes, explained[:2])


def nearest(x: torch.Tensor, queries: torch.Tensor, k: int, exclude_self: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices) (Q, k) of the ``k`` rows of ``x`` nearest to each query (Euclidean);
    with ``exclude_self`` query i is row i of ``x`` and is not its own neighbour."""
    d = torch.cdist(queries.double(), x.double())
    if exclude_self:
        d[torch.arange(len(queries)), torch.arange(len(queries))] = float("inf")
    k = min(k, x.shape[0] - (1 if exclude_self else 0))
    values, idx = d.topk(k, dim=1, largest=False)
    return values, idx


# ----------------------------------------------------------------------------- the map
@dataclass
class UserTask:
    """The user's own task: support images (preprocessed, on the device), labels, class names."""

    x: torch.Tensor
    y: torch.Tensor
    names: List[str]


def user_spec(spec: EvalSpec, user: "UserTask", train_split: FewShotSplit) -> EvalSpec:
    """The training episodes a user's task is compared with: its number of classes, its shot (the
    smallest class's, at most what the training classes allow), one query (unused), the test seed."""
    shots = int(torch.bincount(user.y.cpu()).min())
    largest = int(train_split.counts().max()) if train_split.n_classes else 1
    return replace(spec, n_way=len(user.names), n_shot=max(1, min(shots, largest - 1)), n_query=1,
                   within_group=False, split="train")


def build(algorithm, test_split: FewShotSplit, spec: EvalSpec, *, dataset: str, device, preprocess: Preprocess,
          within: float, k: int, listed: int, train_split: Optional[FewShotSplit] = None,
          user: Optional["UserTask"] = None, callbacks: Optional[Callback] = None) -> TaskMap:
    """The map of ``spec``'s test episodes (and, with ``user``, of as many training episodes shaped
    like the user's task, and that task); see the module docstring.  ``listed`` test episodes get
    their ``k`` nearest.  Every episode is drawn (and refused when impossible) before any work."""
    callbacks = callbacks or Callback()
    sets = [draw(test_split, spec, within, dataset, device, preprocess, spec.split)]
    if user is not None and train_split is not None:
        sets.append(draw(train_split, user_spec(spec, user, train_split), within, dataset, device, preprocess,
                         "train"))
    was_training = algorithm.training
    algorithm.eval()
    sketch = Sketch()
    try:
        with _seeded(spec.seed):  # methods that draw at test time (Reptile) give the same map each time
            vectors = [embed(algorithm, s, callbacks, f"task embeddings ({s.split})", sketch) for s in sets]
            user_vector = None if user is None else \
                sketch(algorithm.task_embedding(user.x, user.y, len(user.names)).float()).cpu()
    finally:
        algorithm.train(was_training)
    result = _assemble(sets, vectors, user_vector, user, k, listed)
    result.sketched = sketch.used
    return result


def _assemble(sets: List[Episodes], vectors: List[torch.Tensor], user_vector: Optional[torch.Tensor],
              user: Optional[UserTask], k: int, listed: int) -> TaskMap:
    """Project every task with one PCA (fitted on the episodes), find the nearest tasks."""
    episodes = torch.cat(vectors)
    projection = pca(episodes)
    ids = [i for s in sets for i in s.ids]
    rows = _Rows(ids, [s.split for s in sets for _ in s.groups], [g for s in sets for g in s.groups],
                 [c for s in sets for c in s.classes])
    test = vectors[0]
    first = min(listed, len(test))
    dist, idx = nearest(test, test[:first], k, exclude_self=True)
    near = [(ids[i], [(ids[int(j)], float(d)) for d, j in zip(dist[i], idx[i])]) for i in range(first)]
    xy = projection(episodes)
    user_near: List[Tuple[str, float]] = []
    if user is not None and user_vector is not None:
        train = vectors[-1] if len(sets) > 1 else test
        offset = len(test) if len(sets) > 1 else 0
        d, j = nearest(train, user_vector[None], k, exclude_self=False)
        user_near = [(ids[offset + int(b)], float(a)) for a, b in zip(d[0], j[0])]
        xy = torch.cat([xy, projection(user_vector[None])])
        rows.add(USER, USER, "your task", list(user.names))
    return TaskMap(rows.ids, rows.splits, xy, rows.groups, rows.classes, near, user_near, projection.explained,
                   dims=int(episodes.shape[1]), user_classes=list(user.names) if user else [])


@dataclass
class _Rows:
    ids: List[str]
    splits: List[str]
    groups: List[str]
    classes: List[List[str]]

    def add(self, task_id: str, split: str, group: str, classes: List[str]) -> None:
        self.ids.append(task_id)
        self.splits.append(split)
        self.groups.append(group)
        self.classes.append(classes)


def _seeded(seed: int) -> contextlib.AbstractContextManager:
    """The global RNG seeded for the block and restored after it."""
    @contextlib.contextmanager
    def block():
        with torch.random.fork_rng():
            torch.manual_seed(int(seed))
            yield

    return block()

