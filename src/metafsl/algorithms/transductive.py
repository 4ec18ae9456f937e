"""Transductive inference: rules that classify an episode's queries *together*, from the
embeddings of any metric learner (support (B, Ns, D), labels (B, Ns), query (B, Nq, D) ->
scores (B, Nq, n_way) whose softmax is the rule's class probabilities and whose arg-max is the
prediction), batched over episodes.

- **TIM** (Boudiaf et al., "Transductive Information Maximization for Few-Shot Learning",
  NeurIPS 2020; TIM-GD): classifier weights start at the prototypes and are fitted by Adam to
  ``ce_weight * CE(support) - (marginal_weight * H(Y_query) - conditional_weight * H(Y_query|X))``;
  paper defaults: L2-normalised features, ``-temperature/2 * ||z - w||^2`` logits, temperature 15,
  weights 0.1 / 1 / 0.1, 1000 iterations at lr 1e-4.
- **BD-CSPN** (Liu, Song & Qin, "Prototype Rectification for Few-Shot Learning", ECCV 2020): the
  queries are shifted by the support-query mean difference (cross-class bias), then each
  prototype becomes a weighted mean of its support and pseudo-labelled (arg-max) queries,
  weights ``softmax(temperature * cos)`` within the class (intra-class bias); the paper's
  temperature is 10.
- **PT-MAP** (Hu, Gripon & Pateux, "Leveraging the Feature Distribution in Transfer-based
  Few-Shot Learning", ICANN 2021): power transform ``(relu(z) + 1e-6) ** power`` (0.5), unit
  length, centred on the episode, unit length again; then ``steps`` rounds of soft query
  assignments by Sinkhorn optimal transport (``exp(-lam * ||z - p||^2)``, balanced classes,
  lam 10) and prototype moves ``p += alpha * (mean_assigned - p)`` (alpha 0.2; 20 rounds, the
  authors' code's setting).
- **LaplacianShot** (Ziko, Dolz, Granger & Ben Ayed, "Laplacian Regularized Few-Shot Learning",
  ICML 2020): rectified prototypes (BD-CSPN), unary costs ``||z - p||^2`` on L2-normalised
  features, and a kNN affinity between queries (3 neighbours); assignments
  ``softmax(-a + lam * W y)`` by bound updates (at most 20) until the bound stops decreasing.
  The paper tunes lam per dataset; 0.7 is its miniImageNet value that easyfsl also uses.

Why test-time rules and not methods (``algo=``): none of them trains anything; each applies to the
embeddings of *any* metric learner (ProtoNet, Matching Networks, Baseline++-style backbones ...),
so they are chosen at test time (``eval.transductive=``) for a run already trained, and the same
run can be scored inductively and transductively on the same episodes.

Why written here and not taken from easyfsl: easyfsl classifies one episode at a time through its
own backbone wrapper (we need batches of episodes from cached embeddings, inside the inference
mode of the fast evaluation) and deviates from the papers in places (cosine logits and
temperature 10 in TIM, no temperature in BD-CSPN, no unit-length step in PT-MAP, k-1 neighbours
in LaplacianShot).  Every option below has a value that reproduces easyfsl 1.5.0's predictions
(tests/test_transductive.py compares them); the defaults are the papers'.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Literal

import torch
from torch.nn import functional as F

Method = Literal["none", "tim", "bdcspn", "ptmap", "laplacianshot"]
EPS = 1e-12


def class_means(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """(B, N, D), (B, N) -> per-class means (B, n_way, D)."""
    onehot = F.one_hot(labels, n_way).to(features.dtype)
    return (onehot.transpose(1, 2) @ features) / onehot.sum(1).clamp_min(1)[..., None]


def cosine(x: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, K, D) -> cosine similarities (B, N, K)."""
    return F.normalize(x, dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2)


def sq_distances(x: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, K, D) -> squared Euclidean distances (B, N, K)."""
    return (x.unsqueeze(2) - protos.unsqueeze(1)).pow(2).sum(-1)


# ----------------------------------------------------------------------------------- TIM
def _tim_logits(x: torch.Tensor, w: torch.Tensor, temperature: float, distance: str) -> torch.Tensor:
    if distance == "cosine":
        return temperature * cosine(x, w)
    return -0.5 * temperature * sq_distances(x, w)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p + EPS)).sum(-1)


def tim(support, support_y, query, n_way: int, iterations: int = 1000, lr: float = 1e-4,
        temperature: float = 15.0, ce_weight: float = 0.1, marginal_weight: float = 1.0,
        conditional_weight: float = 0.1, distance: Literal["sqeuclidean", "cosine"] = "sqeuclidean",
        normalize: bool = True) -> torch.Tensor:
    """TIM-GD; the episodes of a batch are independent (Adam is per element and their losses are
    summed), so a batch gives each episode's own result."""
    if normalize:
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    onehot = F.one_hot(support_y, n_way).to(support.dtype)
    w = class_means(support, support_y, n_way).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=lr)
    with torch.enable_grad():
        for _ in range(int(iterations)):
            ce = -(onehot * _tim_logits(support, w, temperature, distance).log_softmax(-1)).sum(-1).mean(-1)
            p = _tim_logits(query, w, temperature, distance).softmax(-1)
            mutual_info = marginal_weight * _entropy(p.mean(1)) - conditional_weight * _entropy(p).mean(-1)
            optimizer.zero_grad()
            (ce_weight * ce - mutual_info).sum().backward()
            optimizer.step()
    return _tim_logits(query, w.detach(), temperature, distance)


# ------------------------------------------------------------------------------ BD-CSPN
def rectified_prototypes(support, support_y, query, n_way: int, temperature: float) -> torch.Tensor:
    """BD-CSPN's prototypes from support and (already shifted) queries: (B, n_way, D)."""
    protos = class_means(support, support_y, n_way)
    s_onehot = F.one_hot(support_y, n_way).to(support.dtype)
    q_sim = temperature * cosine(query, protos)
    q_onehot = F.one_hot(q_sim.argmax(-1), n_way).to(query.dtype)
    ws = s_onehot * (temperature * cosine(support, protos)).exp()  # (B, Ns, n): weight of each in its class
    wq = q_onehot * q_sim.exp()
    norm = ws.sum(1) + wq.sum(1)  # (B, n)
    return (ws.transpose(1, 2) @ support + wq.transpose(1, 2) @ query) / norm[..., None]


def shifted(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The queries moved by the difference of the support and query means (cross-class bias)."""
    return query + support.mean(1, keepdim=True) - query.mean(1, keepdim=True)


def bdcspn(support, support_y, query, n_way: int, temperature: float = 10.0,
           shift_queries: bool = True) -> torch.Tensor:
    """``temperature`` x the cosine of the queries (shifted ones with ``shift_queries``, as in the
    paper; the unshifted ones otherwise, as easyfsl) to the rectified prototypes."""
    moved = shifted(support, query)
    protos = rectified_prototypes(support, support_y, moved, n_way, temperature)
    return temperature * cosine(moved if shift_queries else query, protos)


# ------------------------------------------------------------------------------- PT-MAP
def sinkhorn(cost: torch.Tensor, lam: float, tol: float = 1e-6, max_iterations: int = 1000) -> torch.Tensor:
    """Entropic transport plans (B, Nq, K) from costs (B, Nq, K): each query sends mass 1, each
    class receives Nq/K; each episode stops when its row sums move less than ``tol``."""
    nq, k = cost.shape[1:]  # balanced: each class receives nq / k
    plan = torch.exp(-lam * cost)
    plan = plan / plan.sum((1, 2), keepdim=True)
    done = torch.zeros(cost.shape[0], dtype=torch.bool, device=cost.device)
    for _ in range(max_iterations):
        rows = plan.sum(2)
        new = plan / (rows + 1e-10).unsqueeze(2)
        new = new * ((nq / k) / (new.sum(1) + 1e-10)).unsqueeze(1)
        plan = torch.where(done[:, None, None], plan, new)
        done = done | ((rows - plan.sum(2)).abs().amax(1) < tol)
        if bool(done.all()):
            break
    return plan


def ptmap_features(x: torch.Tensor, power: float, normalize: bool) -> torch.Tensor:
    """Power transform, then (``normalize``) unit length."""
    x = (x.relu() + 1e-6).pow(power)
    return F.normalize(x, dim=-1) if normalize else x


def ptmap(support, support_y, query, n_way: int, power: float = 0.5, normalize: bool = True, steps: int = 20,
          alpha: float = 0.2, lam: float = 10.0) -> torch.Tensor:
    """Log soft query assignments (B, Nq, n_way) after ``steps`` rounds of PT-MAP."""
    support, query = ptmap_features(support, power, normalize), ptmap_features(query, power, normalize)
    if normalize:
        mean = torch.cat([support, query], 1).mean(1, keepdim=True)
        support, query = F.normalize(support - mean, dim=-1), F.normalize(query - mean, dim=-1)
    protos = class_means(support, support_y, n_way)
    s_onehot = F.one_hot(support_y, n_way).to(support.dtype)
    both = torch.cat([support, query], 1)
    for _ in range(int(steps)):
        weights = torch.cat([s_onehot, sinkhorn(sq_distances(query, protos), lam)], 1)  # (B, Ns+Nq, n)
        target = (weights.transpose(1, 2) @ both) / weights.sum(1)[..., None]
        protos = protos + alpha * (target - protos)
    return sinkhorn(sq_distances(query, protos), lam).clamp_min(1e-30).log()


# ------------------------------------------------------------------------ LaplacianShot
def knn_affinity(x: torch.Tensor, knn: int) -> torch.Tensor:
    """(B, N, D) -> W (B, N, N): W[i, j] = 1 when j is among the ``knn`` nearest neighbours of i
    (itself excluded; fewer when there are not ``knn`` others)."""
    knn = min(knn, x.shape[1] - 1)
    near = torch.cdist(x, x).topk(knn + 1, largest=False).indices[..., 1:]
    return torch.zeros(x.shape[:2] + x.shape[1:2], dtype=x.dtype, device=x.device).scatter_(2, near, 1.0)


def _bound(y: torch.Tensor, unary: torch.Tensor, pairwise: torch.Tensor, lam: float) -> torch.Tensor:
    """The bound (B,) that LaplacianShot's updates decrease."""
    return (y * torch.log(y + EPS) + unary * y - lam * pairwise * y).sum((1, 2))


def laplacianshot(support, support_y, query, n_way: int, knn: int = 3, lam: float = 0.7, steps: int = 20,
                  normalize: bool = True, rectify_temperature: float = 10.0) -> torch.Tensor:
    """Log soft query assignments (B, Nq, n_way) after at most ``steps`` bound updates."""
    if normalize:
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    protos = rectified_prototypes(support, support_y, shifted(support, query), n_way, rectify_temperature)
    unary = sq_distances(query, protos)
    w = knn_affinity(query, int(knn))
    y = (-unary).softmax(-1)
    done = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    previous = torch.full((len(y),), float("inf"), dtype=y.dtype, device=y.device)
    for i in range(int(steps)):
        y = torch.where(done[:, None, None], y, (lam * (w @ y) - unary).softmax(-1))
        bound = _bound(y, unary, w @ y, lam)
        converged = (bound - previous).abs() <= 1e-6 * previous.abs()
        done = done | (converged if i > 1 else torch.zeros_like(done))
        previous = torch.where(done, previous, bound)
        if bool(done.all()):
            break
    return y.clamp_min(1e-30).log()


RULES: Dict[str, Callable[..., torch.Tensor]] = {"tim": tim, "bdcspn": bdcspn, "ptmap": ptmap,
                                                 "laplacianshot": laplacianshot}


@dataclass(frozen=True)
class Transduction:
    """A transductive rule and its settings: ``self(support, support_y, query, n_way)`` gives the
    scores of a batch of episodes, computed in float32 outside autocast and inference mode."""

    method: str
    options: Dict[str, Any] = field(default_factory=dict)

    def __call__(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                 n_way: int) -> torch.Tensor:
        rule = RULES[self.method]
        with torch.inference_mode(False), torch.autocast(support.device.type, enabled=False):
            support, query = support.float().clone(), query.float().clone()
            return rule(support, support_y.clone(), query, n_way, **self.options)
