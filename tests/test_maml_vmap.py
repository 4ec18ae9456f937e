"""Batched MAML (``algo.backend=vmap``) against learn2learn's per-task reference."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY
from metafsl.algorithms import maml_vmap
from metafsl.algorithms.maml import MAML
from metafsl.data.sampler import TaskBatch
from metafsl.errors import UserError
from metafsl.models import build_backbone

WAY, SHOT, QUERY, TASKS, SIZE = 3, 2, 3, 3, 12


def tiny_maml(backend: str, first_order: bool = False, dtype=torch.float64) -> MAML:
    torch.manual_seed(0)  # same initial weights for both backends
    backbone = build_backbone("conv4", 1, SIZE, hidden=4, layers=2)
    return MAML(backbone, WAY, inner_lr=0.3, inner_steps=2, test_inner_steps=3, test_inner_lr=0.2,
                first_order=first_order, backend=backend).to(dtype)


def tiny_batch(dtype=torch.float64) -> TaskBatch:
    g = torch.Generator().manual_seed(1)
    sy = torch.arange(WAY).repeat_interleave(SHOT).expand(TASKS, -1)
    qy = torch.arange(WAY).repeat_interleave(QUERY).expand(TASKS, -1)
    return TaskBatch(torch.rand(TASKS, WAY * SHOT, 1, SIZE, SIZE, generator=g, dtype=dtype), sy,
                     torch.rand(TASKS, WAY * QUERY, 1, SIZE, SIZE, generator=g, dtype=dtype), qy,
                     WAY, SHOT, QUERY)


def meta_gradient(algo: MAML, batch: TaskBatch):
    loss, acc = algo.meta_loss(batch)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in algo.l2l_model.module.named_parameters()}
    return float(loss.detach()), float(acc), grads


@pytest.mark.parametrize("first_order", [False, True])
def test_same_meta_gradient_as_learn2learn(first_order):
    batch = tiny_batch()
    ref_loss, ref_acc, ref = meta_gradient(tiny_maml("l2l", first_order), batch)
    loss, acc, got = meta_gradient(tiny_maml("vmap", first_order), batch)
    assert loss == pytest.approx(ref_loss, abs=1e-12)
    assert acc == ref_acc
    assert ref.keys() == got.keys()
    for k in ref:
        assert ref[k].abs().max() > 0, k
        torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-12, msg=k)


def test_second_order_differs_from_first_order():
    """The comparison above would not notice if both backends silently ran first order."""
    batch = tiny_batch()
    _, _, second = meta_gradient(tiny_maml("vmap", False), batch)
    _, _, first = meta_gradient(tiny_maml("vmap", True), batch)
    assert max(float((second[k] - first[k]).abs().max()) for k in second) > 1e-6


def test_float32_meta_gradient_to_float_tolerance():
    batch = tiny_batch(torch.float32)
    _, _, ref = meta_gradient(tiny_maml("l2l", dtype=torch.float32), batch)
    _, _, got = meta_gradient(tiny_maml("vmap", dtype=torch.float32), batch)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6, msg=k)


def test_same_evaluation_as_learn2learn():
    batch = tiny_batch()
    ref_algo, algo = tiny_maml("l2l"), tiny_maml("vmap")
    ref_algo.eval(), algo.eval()
    torch.testing.assert_close(algo.evaluate(batch), ref_algo.evaluate(batch))
    # the adapted query logits themselves, not only the argmax
    model = algo.l2l_model.module
    logits = maml_vmap.query_logits_no_grad(model, batch, steps=3, lr=0.2)
    for i in range(TASKS):
        adapted = ref_algo.inner_loop(batch.support_x[i], batch.support_y[i], 3, 0.2, first_order=True)
        torch.testing.assert_close(logits[i], adapted(batch.query_x[i]).detach(), rtol=1e-9, atol=1e-12)


def test_batch_norm_uses_per_task_statistics():
    """Doubling one task's pixels must not change another task's logits (no shared statistics)."""
    batch = tiny_batch()
    model = tiny_maml("vmap").l2l_model.module
    base = maml_vmap.query_logits_no_grad(model, batch, steps=1, lr=0.2)
    batch.support_x[0] *= 3
    batch.query_x[0] *= 3
    moved = maml_vmap.query_logits_no_grad(model, batch, steps=1, lr=0.2)
    assert not torch.allclose(moved[0], base[0])
    torch.testing.assert_close(moved[1:], base[1:])


def test_unknown_backend_is_a_user_error():
    """The allowed backends are MAML's ``Literal`` hint, checked where a config becomes a learner."""
    from metafsl import options

    with pytest.raises(UserError, match=r"algo.backend must be one of l2l, vmap \(got 'jax'\)"):
        options.build_option("algo", "maml", {"backend": "jax"}, backbone=None, n_way=WAY)


def test_train_end_to_end_with_vmap_backend(run_cli, tmp_path):
    code, _, err = run_cli("train", "algo=maml", "algo.backend=vmap", "algo.inner_lr=0.2",
                             "trainer.meta_batch_size=2", *TINY, f"hydra.run.dir={tmp_path}")
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["algo"] == "maml"
    assert 0.0 <= summary["test"]["acc"] <= 100.0
    assert summary["train"]["iterations"] == 6


@pytest.mark.parametrize("backend", ["l2l", "vmap"])
def test_task_by_task_backward_matches_batch_mean(backend):
    """What the training loop calls (``meta_backward``: the l2l backend backpropagates each task
    as it goes) accumulates exactly the gradient of the batch-mean meta-loss."""
    batch = tiny_batch()
    ref_loss, ref_acc, ref = meta_gradient(tiny_maml(backend), batch)
    algo = tiny_maml(backend)
    loss, acc = algo.meta_backward(batch)
    assert not loss.requires_grad
    assert float(loss) == pytest.approx(ref_loss, abs=1e-12) and float(acc) == ref_acc
    for k, p in algo.l2l_model.module.named_parameters():
        torch.testing.assert_close(p.grad, ref[k], rtol=1e-9, atol=1e-12, msg=k)
