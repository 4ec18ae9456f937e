"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query x is labelled by attention over the support set S = {(x_i, y_i)}:
p(y | x, S) = sum_i a(x, x_i) onehot(y_i), with a = softmax_i(cos(f(x), g(x_i))).
The loss is the negative log-likelihood of the true label.  With full context embeddings
(``fce=true``), g is a bidirectional LSTM over the support embeddings (plus a skip
connection) and f is an attention LSTM that reads the support set for ``fce_steps``
steps (Vinyals et al., Appendix A.2); otherwise f = g = the backbone.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.metric import MetricLearner

#: floor for probabilities before the log (the attention can put ~0 mass on a class)
_EPS = 1e-8


def cosine_attention(query: torch.Tensor, support: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax over the support set of cosine similarities: (B, Q, D), (B, S, D) -> (B, Q, S)."""
    sim = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)
    return torch.softmax(temperature * sim, dim=-1)


def attention_log_probs(attention: torch.Tensor, support_y: torch.Tensor, n_way: int) -> torch.Tensor:
    """log sum_i a_i onehot(y_i): (B, Q, S), (B, S) -> (B, Q, n_way) log-probabilities."""
    onehot = F.one_hot(support_y, n_way).to(attention.dtype)
    return (attention @ onehot).clamp_min(_EPS).log()


class SupportEncoder(nn.Module):
    """g: bidirectional LSTM over the support embeddings, g(x_i) = h_fwd + h_bwd + g'(x_i)."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)

    def forward(self, support: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(support)
        d = support.shape[-1]
        return support + out[..., :d] + out[..., d:]


class QueryEncoder(nn.Module):
    """f: attention LSTM, K steps of h_k = LSTM(f'(x), [h_{k-1} + f'(x), r_{k-1}]) + f'(x)."""

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.cell = nn.LSTMCell(dim, 2 * dim)
        self.steps = steps

    def forward(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        b, q, d = query.shape
        x = query.reshape(b * q, d)
        h = x
        r = torch.zeros_like(x)
        c = torch.zeros(b * q, 2 * d, device=x.device, dtype=x.dtype)
        mem = support.repeat_interleave(q, dim=0)  # (B*Q, S, D)
        for _ in range(self.steps):
            h_new, c = self.cell(x, (torch.cat([h, r], -1), c))
            h = h_new[:, :d] + x
            a = torch.softmax((mem @ h.unsqueeze(-1)).squeeze(-1), dim=-1)  # content attention
            r = (a.unsqueeze(-1) * mem).sum(1)
        return h.reshape(b, q, d)


class MatchingNet(MetricLearner):
    """Attention over the support set (see the module docstring).

    Arguments:
        fce: full context embeddings: a BiLSTM over the support set, an attention LSTM for queries.
        fce_steps: steps of the attention LSTM that reads the support set (the paper does not state it).
        temperature: multiplies the cosine similarities before the softmax attention (paper: 1).

    Example:
        metafsl train algo=matchingnet algo.fce=true algo.temperature=10
    """

    def __init__(self, backbone: nn.Module, fce: bool = False, fce_steps: int = 5, temperature: float = 1.0):
        super().__init__(backbone)
        self.fce = bool(fce)
        self.temperature = float(temperature)
        if self.fce:
            self.g = SupportEncoder(backbone.out_features)
            self.f = QueryEncoder(backbone.out_features, int(fce_steps))

    def attention(self, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Attention (B, Q, S) of each query over the support set, from backbone embeddings."""
        if self.fce:
            support = self.g(support)
            query = self.f(query, support)
        return cosine_attention(query, support, self.temperature)

    def logits_from_embeddings(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                               n_way: int) -> torch.Tensor:
        """Log-probabilities (B, Q, n_way): cross-entropy on them is the paper's NLL."""
        return attention_log_probs(self.attention(support, query), support_y, n_way)
