"""MAML's compiled meta-gradient (``runtime.compile`` on the CPU): the learn2learn loop's
meta-gradient, a logged fallback when compilation fails, and when the runtime turns it on.

The plumbing is checked with torch.compile's cheap ``eager`` backend (dynamo capture of the
torch.func transforms, no C++ build); the inductor backend is what ``scripts/bench_maml_speed.py``
times and checks against the reference on the real shapes."""
from __future__ import annotations

import logging

import pytest
import torch

from metafsl.algorithms.maml import MAML
from metafsl.algorithms.maml_compiled import _mismatch, inductor_options
from metafsl.engine import runtime
from metafsl.errors import UserError
from metafsl.models import build_backbone
from test_maml_vmap import SIZE, WAY, tiny_batch


def tiny_maml(backend: str = "l2l", first_order: bool = False, steps: int = 1, **options) -> MAML:
    """One conv block, one inner step: what dynamo traces stays small (the suite's budget)."""
    torch.manual_seed(0)
    backbone = build_backbone("conv4", 1, SIZE, hidden=3, layers=1)
    return MAML(backbone, WAY, inner_lr=0.3, inner_steps=steps, first_order=first_order,
                backend=backend, **options).to(torch.float64)


def per_task_backward(algo: MAML, batch):
    loss, acc = algo.meta_backward(batch)  # what the training loop calls
    grads = {k: p.grad.clone() for k, p in algo.l2l_model.module.named_parameters()}
    if algo.step_lrs is not None:
        grads["step_lrs"] = algo.step_lrs.grad.clone()
    return float(loss), float(acc), grads


@pytest.mark.parametrize("first_order, backend, maml_backend", [
    (True, None, "l2l"), (False, None, "l2l"), (False, None, "vmap"), (True, None, "vmap")])
def test_compiled_meta_gradient_equals_the_learn2learn_loop(first_order, backend, maml_backend):
    """backend None: the function that is compiled, run as is (cheap); its capture by dynamo is
    checked with MAML++'s options below (the same function; the vmap function's capture by
    scripts/bench_maml_speed.py)."""
    batch = tiny_batch()
    ref_loss, ref_acc, ref = per_task_backward(tiny_maml("l2l", first_order), batch)
    algo = tiny_maml(maml_backend, first_order)
    assert algo.compile_meta_gradient(backend=backend)
    for _ in range(2):  # the first call compiles, the second reuses the compiled function
        algo.zero_grad(set_to_none=True)
        loss, acc, got = per_task_backward(algo, batch)
        assert algo.compiled.ready and not algo.compiled.failed
        assert loss == pytest.approx(ref_loss, abs=1e-12) and acc == pytest.approx(ref_acc, abs=1e-12)
        for k in ref:
            assert ref[k].abs().max() > 0, k
            torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-12, msg=k)


def mamlpp(msl_iterations: int, first_order_until: int) -> MAML:
    """The CPU presets' MAML++ options (LSLR, MSL, DA) with short schedules."""
    return tiny_maml(steps=2, per_step_lr=True, multi_step_loss=True, msl_iterations=msl_iterations,
                     first_order_until=first_order_until)


@pytest.fixture
def caplog(caplog):
    """pytest's caplog, also where an in-process CLI run earlier in this worker has turned the
    propagation of logger ``metafsl`` off (reporting/console.py)."""
    logger = logging.getLogger("metafsl")
    before, logger.propagate = logger.propagate, True
    yield caplog
    logger.propagate = before


#: backend None: DA for 1 iteration, MSL for 2: iteration 0 first order with the multi-step loss
#: (weights 1/2, 1/2), 1 second order with it (1/4, 3/4), 2 the last step's loss only.  eager: the
#: presets' schedules (both phases end together), so one recompilation at the switch.
PHASES = {None: (2, 1, [(True, True), (False, True), (False, False)]), "eager": (1, 1, [(True, True), (False, False)])}


@pytest.mark.parametrize("backend", [None, "eager"])
def test_compiled_mamlpp_meta_gradient_equals_the_learn2learn_loop_in_every_phase(backend, caplog):
    """LSLR + MSL + DA: in every phase the weights' and the learned rates' meta-gradients and the
    schedules' counters as the uncompiled loop's, each model trained by its own gradients.
    backend None: the compiled function run as is (cheap); eager: captured by dynamo (the plain
    second-order function with the learned rates after the switch), its compilations logged."""
    msl_iterations, first_order_until, want_variants = PHASES[backend]
    batch = tiny_batch()
    ref, algo = mamlpp(msl_iterations, first_order_until), mamlpp(msl_iterations, first_order_until)
    assert algo.compile_meta_gradient(backend=backend)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (ref, algo)]
    variants = []
    with caplog.at_level(logging.INFO, logger="metafsl"):
        for it in range(len(want_variants)):
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            ref_loss, ref_acc, want = per_task_backward(ref, batch)
            loss, acc, got = per_task_backward(algo, batch)
            variants.append(algo.compiled.variant)
            assert loss == pytest.approx(ref_loss, abs=1e-12) and acc == pytest.approx(ref_acc, abs=1e-12)
            assert want.keys() == got.keys() and want["step_lrs"][:2].abs().min() > 0
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12, msg=f"iteration {it}: {k}")
            for opt in opts:
                opt.step()
            assert (int(algo.msl_iteration), int(algo.da_iteration)) == (int(ref.msl_iteration),
                                                                         int(ref.da_iteration)) == (it + 1, it + 1)
    assert variants == want_variants and algo.compiled.ready and not algo.compiled.failed
    if backend is not None:  # one compilation per variant, the second logged as the switch
        messages = [r.getMessage() for r in caplog.records]
        assert sum("Compiling MAML's meta-gradient" in m for m in messages) == 2
        assert sum("training schedule switched" in m for m in messages) == 1


@pytest.mark.parametrize("backend, options", [
    (None, {}), (None, {"per_step_lr": True, "multi_step_loss": True, "msl_iterations": 5}),
    ("eager", {"per_step_lr": True, "multi_step_loss": True, "msl_iterations": 5})])
def test_compiled_per_step_batch_norm_meta_gradient_equals_the_learn2learn_loop(backend, options):
    """MAML++'s per-step batch-norm weights and biases (BNWB), alone and with LSLR and MSL: the
    rows' meta-gradients, the weights' and the learned rates' are the uncompiled loop's, also
    where each inner step's query loss counts (MSL: every row gets a gradient of its own);
    eager: the dynamo capture, the second call (MSL's next weights) reusing it."""
    batch = tiny_batch()
    reference, algo = (tiny_maml(steps=2, per_step_bn=True, **options) for _ in range(2))
    assert algo.compile_meta_gradient(backend=backend) and len(algo.compiled.step_rows) == 2  # BN weight, bias
    rows = [dict(algo.l2l_model.module.named_parameters())[k] for k in algo.compiled.step_rows]
    assert all(r.shape[0] == 3 for r in rows)  # inner steps + 1 rows
    for _ in range(2):
        reference.zero_grad(set_to_none=True)
        algo.zero_grad(set_to_none=True)
        ref_loss, ref_acc, ref = per_task_backward(reference, batch)
        loss, acc, got = per_task_backward(algo, batch)
        assert algo.compiled.ready and not algo.compiled.failed
        assert loss == pytest.approx(ref_loss, abs=1e-12) and acc == pytest.approx(ref_acc, abs=1e-12)
        assert ref.keys() == got.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-12, msg=k)
        if options:  # every row is used and gets its own meta-gradient with MSL
            assert all(bool((r.grad.abs().sum(1) > 0).all()) for r in rows)


def test_tasks_on_threads_give_the_learn2learn_loops_meta_gradient():
    """``task_threads=2``: the tasks of a meta-batch on two threads, summed in task order, give
    the sequential loop's meta-gradient (float64: to rounding), the compiled function (eager: the
    dynamo capture) called from the pool's threads; torch's own thread count is back after.
    Uncompiled (backend None) the tasks stay on the calling thread: ``functional_call`` swaps
    the shared module's parameters while it runs."""
    unthreaded = tiny_maml()
    unthreaded.compile_meta_gradient(backend=None, task_threads=2)
    assert unthreaded.compiled.task_threads == 1
    batch = tiny_batch()
    ref_loss, ref_acc, ref = per_task_backward(tiny_maml("l2l"), batch)
    algo = tiny_maml("l2l")
    assert algo.compile_meta_gradient(backend="eager", task_threads=2) and algo.compiled.task_threads == 2
    before = torch.get_num_threads()
    for _ in range(3):  # the first call compiles on the calling thread, then all run on the pool
        algo.zero_grad(set_to_none=True)
        loss, acc, got = per_task_backward(algo, batch)
        assert algo.compiled.ready and not algo.compiled.failed and algo.compiled._pool is not None
        assert torch.get_num_threads() == before
        assert loss == pytest.approx(ref_loss, abs=1e-12) and acc == pytest.approx(ref_acc, abs=1e-12)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-12, msg=k)


def test_failed_compilation_falls_back_with_one_log_line(caplog):
    batch = tiny_batch()
    _, _, ref = per_task_backward(tiny_maml("l2l"), batch)
    algo = tiny_maml("l2l")
    algo.compile_meta_gradient(backend="no-such-backend")  # fails as a missing C++ compiler would
    with caplog.at_level(logging.INFO, logger="metafsl"):
        _, _, got = per_task_backward(algo, batch)
    assert algo.compiled.failed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Invalid backend: 'no-such-backend'" in warnings[0]
    assert any("Compiling MAML's meta-gradient" in r.getMessage() for r in caplog.records)  # warm-up logged
    for k in ref:  # nothing half-added by the failed attempt: the reference loop's gradient
        torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-12, msg=k)


def _miscompiling(graph, example_inputs):
    """A torch.compile backend that gets every result (meta-gradients, loss) wrong by half."""
    def run(*args):
        return [o * 1.5 if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in graph(*args)]
    return run


def test_a_wrong_compiled_gradient_is_caught_and_not_used(caplog):
    batch = tiny_batch()
    _, _, ref = per_task_backward(tiny_maml("l2l"), batch)
    algo = tiny_maml("l2l")
    algo.compile_meta_gradient(backend=_miscompiling)
    with caplog.at_level(logging.WARNING, logger="metafsl"):
        _, _, got = per_task_backward(algo, batch)
    assert algo.compiled.failed and not algo.compiled.functions
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is not the uncompiled one (loss: relative error 5.0e-01)" in warnings[0]
    for k in ref:  # the uncompiled loop's gradient, nothing of the wrong one added
        torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-12, msg=k)


def _prepared(compile_value, iterations: int, **maml):
    cfg = {"runtime": {"compile": compile_value}, "trainer": {"iterations": iterations}}
    algo = tiny_maml(**maml)
    runtime.from_config(cfg, torch.device("cpu")).prepare(algo)
    return algo.compiled is not None


def test_runtime_compile_turns_the_compiled_meta_gradient_on_where_it_applies():
    long = runtime.AUTO_COMPILE_ITERATIONS
    assert _prepared("auto", long, backend="l2l")
    assert not _prepared("auto", long - 1, backend="l2l")  # a short run: the warm-up would not pay
    assert not _prepared("auto", long, backend="l2l", first_order=True)
    assert _prepared(True, 1, backend="l2l", first_order=True) and _prepared("true", 1, backend="l2l")
    assert not _prepared(False, long, backend="l2l")
    assert _prepared(True, long, backend="vmap")
    assert _prepared(True, 1, backend="l2l", per_step_lr=True, multi_step_loss=True)  # MAML++ options too
    assert _prepared("auto", long, backend="l2l", per_step_bn=True)  # BNWB as well
    assert _prepared("auto", long, backend="l2l", first_order_until=3)  # DA: first order only at first
    assert _prepared("auto", long, backend="vmap", first_order_until=3)
    assert not _prepared(True, long, backend="l2l", recompute_inner=True)  # its own loop is kept
    cfg = {"runtime": {"compile": True, "task_threads": 2}, "trainer": {"iterations": 1}}
    algo = tiny_maml()
    runtime.from_config(cfg, torch.device("cpu")).prepare(algo)
    assert algo.compiled.task_threads == 2  # runtime.task_threads reaches the compiled step
    assert runtime.Runtime(torch.device("cpu")).task_threads == 1  # off unless asked for
    with pytest.raises(UserError, match="runtime.compile must be one of auto, true, false"):
        runtime.from_config({"runtime": {"compile": "fast"}}, torch.device("cpu"))


def _result(loss: float, **grads):
    return {k: torch.tensor(v) for k, v in grads.items()}, (torch.tensor(loss), None)


def test_the_compiled_check_passes_rounding_noise_and_catches_a_wrong_tensor():
    """``_mismatch``: a zero-gradient conv bias (before batch norm) holds rounding noise on both
    sides, and noise of 1.6e-5 of the whole gradient's norm is no miscompilation (it stopped the
    compiled second-order 20-way preset); 1e-3 of the whole norm on a tensor, or a wrong loss, is."""
    want = _result(0.5, weight=[3.0, 4.0], bias=[1e-6, 0.0])  # whole gradient's norm: 5
    assert _mismatch(_result(0.5, weight=[3.0, 4.0], bias=[0.0, 8e-5]), want) is None  # 1.6e-5 of 5
    assert _mismatch(_result(0.5, weight=[3.0, 4.01], bias=[1e-6, 0.0]), want) is None  # 2e-3 of its own
    assert _mismatch(_result(0.5, weight=[3.0, 4.0], bias=[0.0, 5e-3]), want) == "bias: relative error 1.0e-01"
    assert _mismatch(_result(0.5, weight=[3.0, 4.1], bias=[1e-6, 0.0]), want) == "weight: relative error 2.0e-02"
    assert _mismatch(_result(0.51, weight=[3.0, 4.0], bias=[1e-6, 0.0]), want) == "loss: relative error 2.0e-02"


def test_float32_rounding_past_the_floor_passes_against_the_float64_value_and_a_wrong_tensor_does_not():
    """``_mismatch`` with ``exact``: a zero-gradient bias whose compiled noise is past the floor but
    within 10x the uncompiled float32 noise (as on the miniImageNet shape) passes; wrong tensors
    and losses fail, each measured against the float64 value."""
    exact = _result(0.5, weight=[3.0, 4.0], bias=[0.0, 0.0])
    want = _result(0.5, weight=[3.0, 4.0], bias=[1e-3, 0.0])  # the uncompiled float32 noise
    noisy = _result(0.5, weight=[3.0, 4.0], bias=[0.0, 2e-3])
    assert _mismatch(noisy, want) == "bias: relative error 4.5e-02"  # past the floor alone
    assert _mismatch(noisy, want, exact) is None
    assert _mismatch(_result(0.5, weight=[3.0, 4.0], bias=[0.0, 2e-2]), want, exact) == \
        "bias: relative error 4.0e-01 (the uncompiled function's: 2.0e-02)"
    assert _mismatch(_result(0.5, weight=[3.0, 4.2], bias=[1e-3, 0.0]), want, exact) == \
        "weight: relative error 4.0e-02 (the uncompiled function's: 0.0e+00)"
    assert _mismatch(_result(0.6, weight=[3.0, 4.0], bias=[1e-3, 0.0]), want, exact).startswith("loss: relative")


def test_the_float64_reference_of_a_float32_call_is_the_float64_functions():
    from metafsl.algorithms.maml_compiled import CompiledMetaGradient, task_gradient

    algo = tiny_maml("l2l").float()
    batch = tiny_batch(torch.float32)
    model = algo.l2l_model.module
    meta = {k: p.detach() for k, p in model.named_parameters()}
    args = (meta, None, batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0])
    got = CompiledMetaGradient(model, 1, 0.3, False)._in_float64(False, args)
    wide = tiny_maml("l2l").l2l_model.module  # the same weights, built in float64
    want = task_gradient(wide, 1, 0.3, False)({k: p.detach() for k, p in wide.named_parameters()}, None,
                                              *(t.double() if t.is_floating_point() else t for t in args[2:]))
    assert got[1][0].dtype == torch.float64
    torch.testing.assert_close(got[1][0], want[1][0], rtol=1e-12, atol=1e-14)
    for k in want[0]:
        torch.testing.assert_close(got[0][k], want[0][k], rtol=1e-12, atol=1e-14, msg=k)


def test_a_float32_result_past_the_floor_is_judged_against_the_float64_value(monkeypatch):
    from metafsl.algorithms import maml_compiled

    calls = []

    def judged(got, want, exact=None):  # the plain check fails; the one against float64 passes
        calls.append(None if exact is None else exact[1][0].dtype)
        return "bias: relative error 4.5e-02" if exact is None else None

    monkeypatch.setattr(maml_compiled, "_mismatch", judged)
    algo = tiny_maml("l2l").float()
    algo.compile_meta_gradient(backend="eager")
    per_task_backward(algo, tiny_batch(torch.float32))
    assert calls == [None, torch.float64] and not algo.compiled.failed and algo.compiled.functions


def test_inductor_gets_its_cpp_wrapper_unless_torchs_own_setting_decides(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CPP_WRAPPER", raising=False)
    assert inductor_options("inductor") == {"cpp_wrapper": True}
    assert inductor_options("eager") is None and inductor_options(_miscompiling) is None
    monkeypatch.setenv("TORCHINDUCTOR_CPP_WRAPPER", "0")
    assert inductor_options("inductor") is None
