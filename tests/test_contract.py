"""The learner contract (metafsl.algorithms.base) holds for every method: ``adapt`` gives a
classifier, evaluation agrees with it, the fast path of metric learners agrees with the slow
one, and one ``check_episode`` says in one sentence what a learner cannot do."""
from __future__ import annotations

import io
import warnings

import pytest
import torch

from metafsl.algorithms.metric import MetricLearner
from metafsl.conf import group_options
from metafsl.data.base import FewShotSplit
from metafsl.data.sampler import EpisodeSampler, TaskBatch
from metafsl.engine import fast_eval
from metafsl.engine.components import build_learner
from metafsl.errors import UserError
from metafsl.models import build_backbone
from metafsl.options import shipped_option

#: small settings so that every method adapts in a fraction of a second
OPTIONS = {
    "reptile": {"test_inner_steps": 5},
    "baseline": {"finetune_epochs": 3},
    "baselinepp": {"finetune_epochs": 3},
    "metaoptnet": {"test_svm_steps": 10},
    "mann": {"controller_size": 16, "memory_slots": 8, "memory_size": 4},
    "metalstm": {"steps": 2},
}
METHODS = group_options("algo")
VARIANTS = METHODS + ["maml-vmap", "matchingnet-fce", "metaoptnet-ridge", "protonet-learned"]
EXTRA = {"maml-vmap": {"backend": "vmap"}, "matchingnet-fce": {"fce": True, "fce_steps": 2},
         "metaoptnet-ridge": {"head": "ridge"}, "protonet-learned": {"metric_scale": "learned", "scale_init": 2.0}}


def learner(variant: str, n_way: int = 3, size: int = 12):
    """A method (``name`` or ``name-variant``) on a tiny conv4, in eval mode, with batch norm
    statistics that are not the identity."""
    name = variant.split("-")[0]
    torch.manual_seed(0)
    cfg = {"backbone": {**shipped_option("backbone", "conv4"), "hidden": 6, "layers": 2},
           "algo": {**shipped_option("algo", name), **OPTIONS.get(name, {}), **EXTRA.get(variant, {})},
           "episode": {"train": {"n_way": n_way}}}
    algo = build_learner(cfg, channels=1, image_size=size)  # as a run builds it
    with torch.no_grad():  # non-trivial running statistics where the method keeps them
        algo.train()
        algo.backbone(torch.rand(24, 1, size, size) * 2)
    return algo.eval()


def tasks(b=3, n_way=3, shot=2, query=2, size=12, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(n_way).repeat_interleave(shot).expand(b, -1)
    qy = torch.arange(n_way).repeat_interleave(query).expand(b, -1)
    centres = torch.rand(b, n_way, 1, size, size, generator=g)
    sx = centres[:, sy[0]] + 0.2 * torch.rand(b, n_way * shot, 1, size, size, generator=g)
    qx = centres[:, qy[0]] + 0.2 * torch.rand(b, n_way * query, 1, size, size, generator=g)
    return TaskBatch(sx, sy, qx, qy, n_way, shot, query)


def test_every_method_is_covered():
    assert len(METHODS) == 17


@pytest.mark.parametrize("variant", VARIANTS)
def test_adapt_returns_a_classifier_of_the_task(variant):
    algo, batch = learner(variant), tasks()
    classify = algo.adapt(batch.support_x[0], batch.support_y[0])
    logits = classify(batch.query_x[0])
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    assert not logits.requires_grad
    assert all(p.grad is None for p in algo.parameters())  # adapting trains nothing


@pytest.mark.parametrize("variant", VARIANTS)
def test_evaluation_agrees_with_adapting_task_by_task(variant):
    algo, batch = learner(variant), tasks()
    torch.manual_seed(5)  # the same random draws (MANN's orders, fine-tuned heads' init) both ways
    batched = algo.episode_logits(batch)
    torch.manual_seed(5)
    one_by_one = torch.stack([algo.adapt(batch.support_x[i], batch.support_y[i])(batch.query_x[i])
                              for i in range(len(batch))])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-4)
    torch.manual_seed(5)
    acc = algo.evaluate(batch)
    torch.testing.assert_close(acc, (one_by_one.argmax(-1) == batch.query_y).float().mean(-1))


def random_split(classes=10, per_class=6, size=12) -> FewShotSplit:
    g = torch.Generator().manual_seed(1)
    centres = torch.randint(0, 128, (classes, 1, 1, size, size), generator=g)
    noise = torch.randint(0, 128, (classes, per_class, 1, size, size), generator=g)
    images = (centres + noise).to(torch.uint8).flatten(0, 1)
    return FewShotSplit(images, torch.arange(classes).repeat_interleave(per_class), [str(i) for i in range(classes)])


METRIC = [v for v in VARIANTS if isinstance(learner(v), MetricLearner)]


def test_the_metric_learners_are_the_seven_metric_methods():
    assert sorted({v.split("-")[0] for v in METRIC}) == ["feat", "matchingnet", "metaoptnet", "protonet", "relationnet",
                                                          "siamese", "simpleshot"]


@pytest.mark.parametrize("variant", METRIC)
def test_fast_evaluation_equals_the_episode_loop(variant):
    """Embedding each distinct image once gives the very logits of adapting episode by episode."""
    algo, split = learner(variant), random_split()
    assert fast_eval.supported(algo)
    fast = fast_eval.episode_accuracies(algo, EpisodeSampler(split, 3, 2, 3, seed=4), split.images,
                                        episodes=12, max_images=10, episodes_per_step=5)
    batch = EpisodeSampler(split, 3, 2, 3, seed=4).sample(12)
    slow = torch.stack([(algo.adapt(batch.support_x[i], batch.support_y[i])(batch.query_x[i]).argmax(-1)
                         == batch.query_y[i]).float().mean() for i in range(12)])
    torch.testing.assert_close(fast, slow)
    assert 0 < slow.mean() < 1  # a meaningful comparison


def test_fast_path_is_a_declared_capability():
    """A learner that happens to have ``logits_from_embeddings`` is not a metric learner."""
    from metafsl.algorithms.base import Algorithm

    class LooksMetric(Algorithm):
        def logits_from_embeddings(self, support, support_y, query, n_way):
            return query[..., :n_way]

    assert not fast_eval.supported(LooksMetric(build_backbone("conv4", 1, 12, hidden=4, layers=2)))
    assert not fast_eval.supported(learner("maml"))


def test_a_fixed_head_names_its_size():
    algo = learner("maml", n_way=5)
    with pytest.raises(UserError) as err:
        algo.check_episode(20, train=False)
    assert str(err.value) == ("This MAML learner has a 5-way output head: it classifies exactly 5 classes, "
                              "got 20 (train and test with the same n_way).")
    algo.check_episode(5, train=False)
    learner("protonet").check_episode(20, train=False)  # metric learners take any number of classes


def test_mann_classifies_up_to_its_label_slots():
    algo = learner("mann", n_way=5)
    with pytest.raises(UserError) as err:
        algo.check_episode(8, train=False)
    assert str(err.value) == "This MANN learner has 5 label slots: it classifies up to 5 classes, got 8."
    batch = tasks(b=2, n_way=3)
    probs = algo.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0]).softmax(-1)
    assert probs.shape == (6, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    assert algo.evaluate(batch).shape == (2,)  # 3-way episodes on a 5-slot MANN
    with pytest.raises(UserError, match="got 8"):
        algo.adapt(torch.rand(8, 1, 12, 12), torch.arange(8))



def test_learn2learn_is_imported_only_by_the_modules_that_use_it():
    """Metric learners other than ProtoNet's single-task classifier, the engine's evaluation and
    the WRN backbone never import learn2learn; those that do import only the parts of it they use
    (src/metafsl/_l2l.py: its package's import pulls in torchvision, scipy and gym)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, torch; from metafsl.models import build_backbone; "
            "import metafsl.algorithms.protonet, metafsl.algorithms.matchingnet, metafsl.engine.fast_eval; "
            "from metafsl.algorithms.matchingnet import MatchingNet; "
            "net = MatchingNet(build_backbone('wrn28_10', 1, 16, depth=10, widen=1)).eval(); "
            "net.adapt(torch.rand(2, 1, 16, 16), torch.arange(2))(torch.rand(3, 1, 16, 16)); "
            "assert 'learn2learn' not in sys.modules, 'imported'; "
            # a learn2learn backbone and learner import only the parts of learn2learn they use
            "from metafsl.algorithms.maml import MAML; MAML(build_backbone('conv4', 1, 28, hidden=8), 5); "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torchvision', 'scipy', 'gym', 'requests')]; "
            "assert 'learn2learn' in sys.modules and not heavy, heavy")
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name", METHODS)
def test_the_engine_builds_the_training_stream_the_method_declares(name):
    """Episodes (TaskBatch) or, for the transfer baselines, labelled mini-batches of the method's
    own batch size; one meta_backward on what the stream gives, and the stream resumes exactly."""
    from metafsl.data.batches import LabelledBatch
    from metafsl.engine.components import build_train_stream

    algo = learner(name).train()
    episode = {"train": {"n_way": 3, "n_shot": 2, "n_query": 2}}
    sampler = build_train_stream(algo, random_split(), episode, "cpu", 0, None)
    state = sampler.state_dict()
    batch = sampler.sample(2, train=True)
    if algo.train_stream == "batches":
        assert isinstance(batch, LabelledBatch) and len(batch) == algo.train_batch_size
    else:
        assert algo.train_stream == "episodes" and isinstance(batch, TaskBatch) and len(batch) == 2
    loss, _ = algo.meta_backward(batch)
    assert torch.isfinite(loss) and any(p.grad is not None for p in algo.parameters())
    images = (lambda b: b.x) if algo.train_stream == "batches" else (lambda b: b.support_x)
    sampler.load_state_dict(state)  # what a checkpoint keeps of the stream
    assert torch.equal(images(sampler.sample(2, train=True)), images(batch))


@pytest.mark.parametrize("variant", VARIANTS)
def test_adapt_module_is_adapt_as_a_standalone_network(variant):
    """``adapt_module`` (what `metafsl export` writes) gives ``adapt``'s logits from a module of its
    own (copies, no gradients) that torch.jit.trace and the ONNX exporter record for any batch
    size; MANN refuses in one sentence."""
    algo, batch = learner(variant), tasks()
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    if variant == "mann":
        with pytest.raises(UserError, match=r"^MANN cannot be exported: [^.]*; use metafsl predict\.$"):
            algo.adapt_module(sx, sy)
        return
    torch.manual_seed(5)  # the same random draws both ways (fine-tuned heads, Reptile's batches)
    expected = algo.adapt(sx, sy)(qx)
    torch.manual_seed(5)
    module = algo.adapt_module(sx, sy)
    with torch.no_grad():
        for p in algo.parameters():  # the module holds copies: the learner may change
            p.add_(1.0)
    assert not any(p.requires_grad for p in module.parameters()) and not module.training
    ort = pytest.importorskip("onnxruntime")
    file = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's and the legacy exporter's notices
        assert torch.allclose(module(qx), expected, atol=1e-5)
        traced = torch.jit.trace(module, qx, check_trace=False)
        assert torch.allclose(traced(qx[:4]), module(qx[:4]), atol=1e-6)
        torch.onnx.export(module, (qx,), file, input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False,
                          opset_version=17)
    session = ort.InferenceSession(file.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(session.run(None, {"x": qx[:4].numpy()})[0]), module(qx[:4]),
                              atol=1e-5)


#: methods whose task embedding depends on the order of the support set: Reptile's test-time
#: inner loop draws mini-batches of test_inner_batch images by position
ORDER_DEPENDENT = {"reptile"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_task_embedding_is_one_vector_per_task_free_of_support_order(variant):
    """``task_embedding`` (what `metafsl tasks` maps): one finite vector of the same size for every
    task, different for different tasks, nothing trained, and (where the method is) the same for
    any order of the support set."""
    algo, batch = learner(variant), tasks(b=2)
    sx, sy = batch.support_x, batch.support_y
    a, b = algo.task_embedding(sx[0], sy[0]), algo.task_embedding(sx[1], sy[1])
    assert a.dim() == 1 and a.shape == b.shape and torch.isfinite(a).all() and not a.requires_grad
    assert not torch.allclose(a, b)
    assert all(p.grad is None for p in algo.parameters())
    if variant.split("-")[0] not in ORDER_DEPENDENT:
        perm = torch.tensor([5, 2, 0, 3, 1, 4])
        torch.testing.assert_close(algo.task_embedding(sx[0][perm], sy[0][perm]), a, rtol=1e-4, atol=1e-6)
