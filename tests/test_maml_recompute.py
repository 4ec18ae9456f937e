"""Memory-lean second-order MAML (``algo.recompute_inner``): the same meta-gradient as the
learn2learn reference, a user error where it does not apply."""
from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from metafsl.algorithms import maml_recompute
from metafsl.algorithms.maml import MAML
from metafsl.errors import UserError
from metafsl.models import build_backbone
from test_maml_vmap import WAY, meta_gradient, tiny_batch


def tiny(recompute: bool, steps: int = 3) -> MAML:
    torch.manual_seed(0)
    backbone = build_backbone("conv4", 1, 12, hidden=4, layers=2)
    return MAML(backbone, WAY, inner_lr=0.3, inner_steps=steps, test_inner_steps=2,
                recompute_inner=recompute).to(torch.float64)


@pytest.fixture
def one_channel_groups(monkeypatch):
    """The query pass computes its conv blocks one output channel at a time, and says how often."""
    calls = []
    grouped = maml_recompute.grouped_block
    monkeypatch.setattr(maml_recompute, "GROUP_BYTES", 1)
    monkeypatch.setattr(maml_recompute, "grouped_block", lambda block, x: calls.append(1) or grouped(block, x))
    return calls


def test_recomputed_inner_steps_give_the_reference_meta_gradient(one_channel_groups):
    batch = tiny_batch()
    ref_loss, ref_acc, ref = meta_gradient(tiny(False), batch)
    loss, acc, got = meta_gradient(tiny(True), batch)
    assert loss == pytest.approx(ref_loss, abs=1e-12) and acc == ref_acc
    for k in ref:
        assert ref[k].abs().max() > 0, k
        torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-12, msg=k)
    assert len(one_channel_groups) == 2 * len(batch)  # both conv blocks of each task's query pass


def test_per_task_backward_and_test_time_are_unchanged():
    batch = tiny_batch()
    ref, lean = tiny(False), tiny(True)
    ref.meta_backward(batch)
    lean.meta_backward(batch)
    for (k, a), (_, b) in zip(ref.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12, msg=k)
    ref.eval(), lean.eval()
    torch.testing.assert_close(lean.episode_logits(batch), ref.episode_logits(batch))


@pytest.mark.parametrize("options", [{"backend": "vmap"}, {"first_order": True}, {"per_step_lr": True}])
def test_recompute_where_it_does_not_apply_is_one_sentence(options):
    backbone = build_backbone("conv4", 1, 12, hidden=4, layers=2)
    with pytest.raises(UserError, match="recompute_inner=true applies to second-order MAML"):
        MAML(backbone, WAY, recompute_inner=True, **options)


def saved_bytes(algo: MAML, batch) -> int:
    """Bytes that autograd still holds for the backward pass once the meta-loss is computed
    (tensors saved by graphs freed on the way, such as a recomputed step's, do not count)."""
    saved = []

    def pack(t: torch.Tensor):
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = algo.meta_loss(batch)
    alive = {t.data_ptr(): t.numel() * t.element_size() for t in (r() for r in saved) if t is not None}
    del loss
    return sum(alive.values())


def test_recompute_keeps_far_less_for_the_backward_pass():
    batch = tiny_batch()
    ref, lean = saved_bytes(tiny(False, steps=6), batch), saved_bytes(tiny(True, steps=6), batch)
    assert lean < ref / 3, (lean, ref)


def test_the_query_pass_keeps_only_block_inputs(monkeypatch):
    """Checkpointing the conv blocks of the query pass cuts what the lean meta-loss keeps by far
    more than half (the query's activations are no longer kept, only each block's input)."""
    batch = tiny_batch()
    grouped = saved_bytes(tiny(True, steps=2), batch)
    monkeypatch.setattr(maml_recompute, "channel_separable", lambda module: False)
    assert grouped < saved_bytes(tiny(True, steps=2), batch) / 3


def test_the_lean_meta_iteration_imports_nothing_heavy():
    """A lean meta-iteration loads no compiler or symbolic-maths modules (``torch.utils.checkpoint``
    imports ``torch._dynamo``, ``autograd.grad`` with explicit cotangents imports sympy: together
    about 170 MiB of a CPU process's memory, more than the lean pass keeps)."""
    code = ("import sys, torch\n"
            "from test_maml_recompute import tiny\n"
            "from test_maml_vmap import tiny_batch\n"
            "before = set(sys.modules)\n"
            "tiny(True).meta_backward(tiny_batch())\n"
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('sympy', 'mpmath')\n"
            "             or m.startswith('torch._dynamo')))\n")
    tests = Path(__file__).parent
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tests, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(tests), str(tests.parent / "src"), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
