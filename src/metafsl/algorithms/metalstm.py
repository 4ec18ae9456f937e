"""Meta-learner LSTM (Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017).

The classifier network ``net`` (backbone + linear head; the paper's "learner") is trained on
each task's support set by ``steps`` updates that an LSTM produces.  The update is an LSTM
cell-state update whose cell state *is* the network's flattened parameter vector:
    theta_t = f_t * theta_{t-1} - i_t * grad_t,
    i_t = sigmoid(W_I [h_t, theta_{t-1}, i_{t-1}] + b_I),
    f_t = sigmoid(W_F [h_t, theta_{t-1}, f_{t-1}] + b_F),
where h_t comes from a first, ordinary LSTM layer reading the preprocessed loss and gradient
(Andrychowicz et al. 2016: x -> (log|x| / p, sign x) if |x| >= e^-p else (-1, e^p x)).
All weights are shared across coordinates (each coordinate is a batch element).  The
initial cell state theta_0 is the network's own (meta-learned) parameters.  As in the
paper, gradients and losses are inputs: no second derivatives flow through them.  The
forget-gate bias starts high (f ~ 1) and the input-gate bias low (small initial steps).
Exported (``metafsl export``), the classifier is the network with the weights read from the
support set, like a MAML-family learner's.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from metafsl.algorithms.base import Classifier, class_count
from metafsl.algorithms.gradient import use_batch_statistics
from metafsl.algorithms.sequence import SequenceLearner
from metafsl.algorithms.standalone import network_with


def preprocess(x: torch.Tensor, p: float) -> torch.Tensor:
    """Andrychowicz et al.'s gradient preprocessing: (N,) -> (N, 2)."""
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, x.abs().clamp_min(1e-38).log() / p, torch.full_like(x, -1.0))
    second = torch.where(big, x.sign(), x * math.exp(p))
    return torch.stack([first, second], -1)


class UpdateCell(nn.Module):
    """The second layer: cell state = the network's parameters, gates f and i per coordinate."""

    def __init__(self, hidden: int, forget_bias: float, input_bias: float):
        super().__init__()
        self.w_f = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.w_i = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.b_f = nn.Parameter(torch.tensor(float(forget_bias)))
        self.b_i = nn.Parameter(torch.tensor(float(input_bias)))

    def forward(self, h, theta, grad, f_prev, i_prev):
        f = torch.sigmoid(torch.cat([h, theta[:, None], f_prev[:, None]], -1) @ self.w_f + self.b_f)
        i = torch.sigmoid(torch.cat([h, theta[:, None], i_prev[:, None]], -1) @ self.w_i + self.b_i)
        return f * theta - i * grad, f, i


class MetaLSTM(SequenceLearner):
    """An LSTM that produces the classifier network's updates (see the module docstring).

    Arguments:
        steps: updates the meta-learner makes to the network per task during training.
        test_steps: the same at test time; null: steps.
        hidden: units of the first LSTM layer.
        preprocess_p: p of Andrychowicz et al.'s (2016) gradient and loss preprocessing.
        forget_bias: initial bias of the forget gate (high: the parameters are kept).
        input_bias: initial bias of the input gate (low: small first steps).

    Example:
        metafsl train algo=metalstm algo.steps=10
    """

    #: the network's loss gradient is an input at test time too
    adapts_with_gradients = True
    renamed_state_keys = {"learner.": "net."}  # how checkpoints of 0.1.0 name it
    task_embedding_kind = "the change of the network's weights by the meta-learner's test-time updates"

    def __init__(self, backbone: nn.Module, n_way: int, steps: int = 5, test_steps: Optional[int] = None,
                 hidden: int = 20, preprocess_p: float = 10.0, forget_bias: float = 5.0,
                 input_bias: float = -5.0):
        super().__init__(backbone, n_way)
        use_batch_statistics(backbone)
        self.head = nn.Linear(backbone.out_features, n_way)
        self.net = nn.Sequential(self.backbone, self.head)
        self.steps = int(steps)
        self.test_steps = int(steps if test_steps is None else test_steps)
        self.p = float(preprocess_p)
        self.lstm = nn.LSTMCell(4, int(hidden))
        self.update = UpdateCell(int(hidden), forget_bias, input_bias)
        self._names = [n for n, _ in self.net.named_parameters()]
        self._shapes = [p.shape for _, p in self.net.named_parameters()]

    def unflatten(self, theta: torch.Tensor):
        chunks = theta.split([s.numel() for s in self._shapes])
        return {n: c.view(s) for n, c, s in zip(self._names, chunks, self._shapes)}

    def net_logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, self.unflatten(theta), (x,))

    def adapted_params(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
        """The network's parameters after ``steps`` meta-learner updates on (x, y)."""
        theta = torch.cat([p.flatten() for p in self.net.parameters()])
        n = theta.numel()
        h = torch.zeros(n, self.lstm.hidden_size, device=theta.device, dtype=theta.dtype)
        c, f, i = torch.zeros_like(h), torch.zeros_like(theta), torch.zeros_like(theta)
        for _ in range(steps):
            with torch.enable_grad():  # gradient of the network's loss: an input, no graph kept
                probe = theta.detach().requires_grad_()
                loss = F.cross_entropy(self.net_logits(probe, x), y)
                grad = torch.autograd.grad(loss, probe)[0]
            inputs = torch.cat([preprocess(loss.detach().expand(n), self.p), preprocess(grad, self.p)], -1)
            h, c = self.lstm(inputs, (h, c))
            theta, f, i = self.update(h, theta, grad, f, i)
        return theta

    def read(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int, training: bool) -> Classifier:
        """The network after the meta-learner's updates (test time: no graph through them)."""
        if training:
            theta = self.adapted_params(support_x, support_y, self.steps)
        else:
            with torch.no_grad():
                theta = self.adapted_params(support_x, support_y, self.test_steps)
        return lambda query_x: self.net_logits(theta, query_x)

    def task_embedding(self, support_x: torch.Tensor, support_y: torch.Tensor,
                       n_way: Optional[int] = None) -> torch.Tensor:
        """The change of the network's weights by the meta-learner's test-time updates, flattened:
        (D,).  The meta-learner reads the whole support set at each step (full-batch gradients),
        so the order of the support images does not matter."""
        n_way = class_count(support_y) if n_way is None else n_way
        self.check_episode(n_way, train=False)
        with torch.no_grad():
            theta = self.adapted_params(support_x, support_y, self.test_steps)
            return (theta - torch.cat([p.flatten() for p in self.net.parameters()])).detach()

    def fit_module(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> nn.Module:
        """Reading the support set yields the network's new weights: a copy of it holding them."""
        with torch.no_grad():
            theta = self.adapted_params(support_x, support_y, self.test_steps)
        return network_with(self.net, self.unflatten(theta))
