"""Memory-augmented neural network (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap,
"Meta-Learning with Memory-Augmented Neural Networks", ICML 2016).

An episode is a sequence: the support examples in random order, each presented together
with the *previous* example's label (one-step offset; a zero vector at the first step), so
the network must bind an image to its label in memory and retrieve it when that class
reappears.  Each query is then presented after the whole support sequence (with the last
support label as its offset input); queries do not see each other's labels.

Per step, an LSTM controller reads [x_t, onehot(y_{t-1}), r_{t-1}] and emits a key k_t per
read head and a write gate alpha.  Least-recently-used access (Santoro et al., Sec. 3.2):
    write weights  w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1},
    the least-used slot is zeroed, then M_t = M_{t-1} + w^w_t k_t^T,
    read weights   w^r_t = softmax(cos(k_t, M_t)),  r_t = w^r_t M_t,
    usage          w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t,
and w^lu_t marks the n (= number of read heads) least-used slots (head j writes to the
j-th least-used one).  The class scores come
from [h_t, r_t].  The image enters through the backbone (Santoro et al. used raw pixels).

``input_norm`` (default on) passes each embedding through a LayerNorm before the controller.
A conv backbone's embeddings are post-ReLU, all positive and strongly correlated across
classes, so the keys the controller derives from them barely tell classes apart and the
memory has nothing to bind to; without the LayerNorm the controller stays at chance for
thousands of meta-batches (measured in docs/benchmarks.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from metafsl.algorithms.base import Classifier, accuracy
from metafsl.algorithms.sequence import SequenceLearner
from metafsl.data.sampler import TaskBatch
from metafsl.errors import UserError


def offset_labels(labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """(B, T) labels -> (B, T, n_way): step t carries onehot(y_{t-1}); step 0 carries zeros."""
    onehot = F.one_hot(labels, n_way).float()
    return torch.cat([torch.zeros_like(onehot[:, :1]), onehot[:, :-1]], dim=1)


@dataclass
class MemoryState:
    h: torch.Tensor  # (N, H) controller
    c: torch.Tensor
    memory: torch.Tensor  # (N, slots, size)
    usage: torch.Tensor  # (N, slots)
    read_w: torch.Tensor  # (N, heads, slots)
    reads: torch.Tensor  # (N, heads * size)

    def repeat(self, n: int) -> "MemoryState":
        """Each state copied n times (consecutively), for parallel continuations."""
        return MemoryState(*(t.repeat_interleave(n, dim=0) for t in
                             (self.h, self.c, self.memory, self.usage, self.read_w, self.reads)))


class MANN(SequenceLearner):
    """An LSTM controller with a least-recently-used external memory (see the module docstring).

    Arguments:
        controller_size: hidden units of the LSTM controller.
        memory_slots: rows of the external memory.
        memory_size: width of each memory row.
        read_heads: read heads (keys per step); at most memory_slots.
        gamma: decay of the usage weights (least-recently-used access).
        input_norm: a LayerNorm on the backbone's embeddings before the controller (our addition).

    Example:
        metafsl train algo=mann algo.memory_slots=64
    """

    #: labels enter as one-hot inputs of n_way slots; a task may use fewer of them
    fewer_classes_ok = True
    head_noun = "{n} label slots"
    export_refusal = ("its classifier is the state of its controller and memory after reading the support "
                      "set in a random order, not a network of weights; use metafsl predict")

    def __init__(self, backbone: nn.Module, n_way: int, controller_size: int = 200, memory_slots: int = 128,
                 memory_size: int = 40, read_heads: int = 4, gamma: float = 0.95, input_norm: bool = True):
        if read_heads > memory_slots:
            raise UserError(f"MANN needs read_heads <= memory_slots (got {read_heads} > {memory_slots}).")
        super().__init__(backbone, n_way)
        self.heads, self.slots, self.size = int(read_heads), int(memory_slots), int(memory_size)
        self.gamma = float(gamma)
        d = backbone.out_features
        self.norm = nn.LayerNorm(d) if input_norm else nn.Identity()
        self.controller = nn.LSTMCell(d + n_way + self.heads * self.size, controller_size)
        self.key = nn.Linear(controller_size, self.heads * self.size)
        self.gate = nn.Linear(controller_size, self.heads)
        self.strength = nn.Linear(controller_size, self.heads)
        self.out = nn.Linear(controller_size + self.heads * self.size, n_way)

    def initial_state(self, n: int, device, dtype) -> MemoryState:
        def z(*shape):
            return torch.zeros(*shape, device=device, dtype=dtype)

        hsize = self.controller.hidden_size
        return MemoryState(z(n, hsize), z(n, hsize), z(n, self.slots, self.size) + 1e-6, z(n, self.slots),
                           z(n, self.heads, self.slots), z(n, self.heads * self.size))

    def step(self, x: torch.Tensor, prev_label: torch.Tensor, s: MemoryState) -> Tuple[torch.Tensor, MemoryState]:
        """One time step: (N, D) input, (N, n_way) offset label -> (N, n_way) logits, new state."""
        n = x.shape[0]
        h, c = self.controller(torch.cat([x, prev_label, s.reads], -1), (s.h, s.c))
        key = torch.tanh(self.key(h)).view(n, self.heads, self.size)
        alpha = torch.sigmoid(self.gate(h)).view(n, self.heads, 1)
        # least-used weights from the previous usage: the `heads` smallest entries, one per head
        lu_idx = torch.topk(s.usage, self.heads, dim=-1, largest=False, sorted=True).indices
        least_used = F.one_hot(lu_idx, self.slots).to(x.dtype)  # (N, heads, slots)
        write_w = alpha * s.read_w + (1 - alpha) * least_used
        erase = torch.ones_like(s.usage).scatter(-1, lu_idx[:, :1], 0.0)  # zero the least-used slot
        memory = s.memory * erase.unsqueeze(-1) + torch.einsum("nhs,nhm->nsm", write_w, key)
        sim = F.normalize(key, dim=-1, eps=1e-8) @ F.normalize(memory, dim=-1, eps=1e-8).transpose(1, 2)
        beta = 1 + F.softplus(self.strength(h)).unsqueeze(-1)  # key strength >= 1 (NTM)
        read_w = torch.softmax(beta * sim, dim=-1)
        reads = torch.einsum("nhs,nsm->nhm", read_w, memory).reshape(n, -1)
        usage = self.gamma * s.usage + read_w.sum(1) + write_w.sum(1)
        logits = self.out(torch.cat([h, reads], -1))
        return logits, MemoryState(h, c, memory, usage, read_w, reads)

    def read_support(self, support: torch.Tensor, labels: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor, MemoryState, torch.Tensor]:
        """Present (B, S, D) embeddings in a random order per task, each with the previous label.

        Returns the step logits (B, S, n_way slots), their labels (B, S), the final state and the
        one-hot of the last label shown (B, n_way slots)."""
        b, ns, _ = support.shape
        order = torch.stack([torch.randperm(ns, device=support.device) for _ in range(b)])
        seq_x = support.gather(1, order.unsqueeze(-1).expand_as(support))
        seq_y = labels.gather(1, order)
        prev = offset_labels(seq_y, self.n_way)
        state = self.initial_state(b, support.device, support.dtype)
        step_logits = []
        for t in range(ns):
            logits, state = self.step(seq_x[:, t], prev[:, t], state)
            step_logits.append(logits)
        last = F.one_hot(seq_y[:, -1], self.n_way).to(support.dtype)
        return torch.stack(step_logits, 1), seq_y, state, last

    def answer(self, state: MemoryState, last: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Query logits (B, Q, n_way slots): each query continues the support sequence on its own."""
        b, nq, _ = query.shape
        logits, _ = self.step(query.reshape(b * nq, -1), last.repeat_interleave(nq, dim=0), state.repeat(nq))
        return logits.view(b, nq, -1)

    def run(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Support-step logits (B, S, K), their labels (B, S), query logits (B, Q, K), K = batch.n_way."""
        support, query = (self.norm(z) for z in self.embed_episodes(batch))
        s_logits, seq_y, state, last = self.read_support(support, batch.support_y)
        q_logits = self.answer(state, last, query)
        return s_logits[..., :batch.n_way], seq_y, q_logits[..., :batch.n_way]

    def read(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int, training: bool) -> Classifier:
        """One task's memory after its support sequence; logits of its ``n_way`` classes only."""
        _, _, state, last = self.read_support(self.norm(self.backbone(support_x))[None], support_y[None])
        return lambda query_x: self.answer(state, last, self.norm(self.backbone(query_x))[None])[0, :, :n_way]

    def episode_logits(self, batch: TaskBatch) -> torch.Tensor:
        """All tasks at once (the same random orders as task by task)."""
        self.check_episode(batch.n_way, train=False)
        with torch.no_grad():
            return self.run(batch)[2]

    def meta_loss(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy over every step of the sequence (support and query), as Santoro et al."""
        s_logits, s_y, q_logits = self.run(batch)
        logits = torch.cat([s_logits, q_logits], 1)
        labels = torch.cat([s_y, batch.query_y], 1)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return loss, accuracy(q_logits.detach(), batch.query_y).mean()
