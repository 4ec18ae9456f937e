"""MetaOptNet (Lee, Maji, Ravichandran & Soatto, "Meta-Learning with Differentiable Convex
Optimization", CVPR 2019).

A linear classifier is *solved* on each task's support embeddings and applied to the query
embeddings; the embedding is trained through the solution.  Two heads:

``ridge``: ridge regression to one-hot targets, closed form in the dual (n support points):
    W = X^T (X X^T + lambda I)^-1 Y,   logits = Q W = (Q X^T)(X X^T + lambda I)^-1 Y.

``svm``: the Crammer-Singer multi-class SVM.  Its dual over alpha (n x K) is
    min_alpha  1/2 sum_k alpha_k^T G alpha_k - sum_i alpha_{i, y_i},   G = X X^T,
    s.t.  alpha_i <= C onehot(y_i)  and  sum_k alpha_{ik} = 0  for every support point i,
with W = alpha^T X.  The paper solves it with qpth (a differentiable interior-point QP
solver); qpth is not a dependency here, so we solve it with FISTA (accelerated projected
gradient, step 1/L with L the largest eigenvalue of G) for a fixed number of iterations,
written in plain torch and differentiated by unrolling.  The projection onto each row's
feasible set {a <= c, sum a = 0} is exact: with b = c - a it is the Euclidean projection
onto the simplex {b >= 0, sum b = C}, computed by sorting (Duchi et al. 2008).  At a
solution alpha is a fixed point of the projected-gradient map, i.e. it satisfies the KKT
conditions (checked in the tests).

Query logits are multiplied by a learned scale (initial value ``scale``), and training uses
label smoothing, as in the authors' code.
"""
from __future__ import annotations

from typing import Literal, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.base import accuracy
from metafsl.algorithms.metric import MetricLearner
from metafsl.algorithms.standalone import linear_on
from metafsl.data.sampler import TaskBatch


def ridge_head(query: torch.Tensor, support: torch.Tensor, onehot: torch.Tensor, lam: float) -> torch.Tensor:
    """Ridge-regression logits (B, Q, K) from (B, Q, D), (B, N, D), one-hot (B, N, K)."""
    gram = support @ support.transpose(1, 2)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    coef = torch.linalg.solve(gram + lam * eye, onehot)  # (B, N, K)
    return (query @ support.transpose(1, 2)) @ coef


def project_simplex(w: torch.Tensor, total: float) -> torch.Tensor:
    """Euclidean projection of each row of ``w`` onto {b >= 0, sum b = total}."""
    u, _ = torch.sort(w, dim=-1, descending=True)
    css = u.cumsum(-1) - total
    k = torch.arange(1, w.shape[-1] + 1, device=w.device, dtype=w.dtype)
    rho = ((u - css / k) > 0).sum(-1, keepdim=True).clamp_min(1)  # active count
    tau = css.gather(-1, rho - 1) / rho.to(w.dtype)
    return (w - tau).clamp_min(0)


def project_cs_dual(alpha: torch.Tensor, onehot: torch.Tensor, c: float) -> torch.Tensor:
    """Project each row onto {a <= C onehot(y_i), sum a = 0}."""
    upper = c * onehot
    return upper - project_simplex(upper - alpha, c)


def svm_dual_objective(alpha: torch.Tensor, gram: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    return 0.5 * (alpha * (gram @ alpha)).sum((-2, -1)) - (alpha * onehot).sum((-2, -1))


def svm_dual(gram: torch.Tensor, onehot: torch.Tensor, c: float, steps: int) -> torch.Tensor:
    """Crammer-Singer dual variables (B, N, K) by ``steps`` FISTA iterations from alpha = 0."""
    lipschitz = torch.linalg.eigvalsh(gram.detach()).amax(-1).clamp_min(1e-6).view(-1, 1, 1)
    alpha = torch.zeros_like(onehot)
    z, t = alpha, 1.0
    for _ in range(steps):
        new = project_cs_dual(z - (gram @ z - onehot) / lipschitz, onehot, c)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = new + ((t - 1) / t_next) * (new - alpha)
        alpha, t = new, t_next
    return alpha


def svm_head(query: torch.Tensor, support: torch.Tensor, onehot: torch.Tensor, c: float,
             steps: int) -> torch.Tensor:
    """Multi-class SVM logits (B, Q, K): W = alpha^T X, logits = Q W^T."""
    alpha = svm_dual(support @ support.transpose(1, 2), onehot, c, steps)
    return (query @ support.transpose(1, 2)) @ alpha


class MetaOptNet(MetricLearner):
    """A linear classifier solved on each task's support embeddings (see the module docstring).

    Arguments:
        head: svm, the Crammer-Singer multi-class SVM; ridge, ridge regression to one-hot targets.
        svm_c: the SVM's regularisation constant C.
        svm_steps: unrolled accelerated projected-gradient iterations on the SVM dual during training.
        test_svm_steps: the same iterations at test time.
        ridge_lambda: the ridge head's regularisation lambda.
        scale: initial value of the learned scale of the query logits.
        label_smoothing: label smoothing of the training loss.

    Example:
        metafsl train algo=metaoptnet algo.head=ridge
    """

    def __init__(self, backbone: nn.Module, head: Literal["svm", "ridge"] = "svm", svm_c: float = 0.1, svm_steps: int = 50,
                 test_svm_steps: int = 200, ridge_lambda: float = 50.0, scale: float = 1.0,
                 label_smoothing: float = 0.1):
        super().__init__(backbone)
        self.head = head
        self.svm_c, self.svm_steps, self.test_svm_steps = float(svm_c), int(svm_steps), int(test_svm_steps)
        self.ridge_lambda = float(ridge_lambda)
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.label_smoothing = float(label_smoothing)

    def logits_from_embeddings(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                               n_way: int) -> torch.Tensor:
        """The solved head's query logits; the SVM takes ``svm_steps`` in training mode,
        ``test_svm_steps`` in eval mode."""
        onehot = F.one_hot(support_y, n_way).to(support.dtype)
        if self.head == "ridge":
            logits = ridge_head(query, support, onehot, self.ridge_lambda)
        else:
            steps = self.svm_steps if self.training else self.test_svm_steps
            logits = svm_head(query, support, onehot, self.svm_c, steps)
        return self.scale * logits

    def fit_module(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> nn.Module:
        """The backbone and the solved head as one linear map: the logits are linear in the query
        embedding, so scoring the identity's rows gives the head's weights (D, n_way)."""
        support = self.embed(support_x)
        basis = torch.eye(support.shape[-1], device=support.device, dtype=support.dtype)
        weight = self.logits_from_embeddings(support[None], support_y[None], basis[None], n_way)[0]
        return linear_on(self.backbone, weight.T)

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.batch_logits(batch)
        # MetaOptNet's smoothing: 1 - eps on the true class, eps / (K - 1) on each other class.
        onehot = F.one_hot(batch.query_y, batch.n_way).to(logits.dtype)
        eps = self.label_smoothing
        target = onehot * (1 - eps) + (1 - onehot) * eps / max(batch.n_way - 1, 1)
        loss = -(target * F.log_softmax(logits, -1)).sum(-1).mean()
        return loss, accuracy(logits.detach(), batch.query_y).mean()
