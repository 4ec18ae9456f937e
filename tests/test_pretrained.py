"""Pretrained backbones (torchvision, timm), backbone.weights/freeze/lr, SimpleShot.

Nothing is downloaded: the "published" weights are a state dict the tests write into a temporary
torch hub cache, and the weight files are written here too.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from metafsl.algorithms.protonet import ProtoNet
from metafsl.algorithms.simpleshot import SimpleShot
from metafsl.data.sampler import TaskBatch
from metafsl.engine.components import parameter_groups
from metafsl.errors import UserError
from metafsl.models import build_backbone, published, weights

TORCHVISION_FILE = "mobilenet_v3_small-047dcff4.pth"  # torchvision's MobileNet_V3_Small_Weights.IMAGENET1K_V1
SMALL = ["backbone=torchvision", "backbone.model=mobilenet_v3_small"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A torch hub cache ($TORCH_HOME) holding a mobilenet_v3_small state dict in torchvision's own
    layout (with its classifier), as a download would leave it."""
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(3)
    state = torchvision.models.mobilenet_v3_small().state_dict()
    torch.save(state, home / "hub" / "checkpoints" / TORCHVISION_FILE)
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home, state
    if old is None:
        os.environ.pop("TORCH_HOME")
    else:
        os.environ["TORCH_HOME"] = old


def test_factories_give_embeddings_for_grey_and_colour_images():
    for option, kw, channels, dim in (("resnet18", {}, 1, 512), ("timm", {"model": "test_resnet"}, 3, None),
                                      ("timm", {"model": "test_vit", "input_size": 32}, 1, None)):
        model = build_backbone(option, channels, 20, **kw)
        out = model(torch.rand(2, channels, 20, 20))
        assert out.shape == (2, model.out_features)
        assert dim is None or model.out_features == dim
        assert model.input_normalization is None  # random init: the dataset's own normalisation
    assert model.input_size == 32 and model.body.patch_embed.img_size == (32, 32)


def test_published_weights_come_from_the_cache_with_their_preprocessing(hub):
    _, state = hub
    model = build_backbone("torchvision", 1, 16, model="mobilenet_v3_small", weights="imagenet")
    assert model.input_normalization == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert model.input_size == 224  # the weights' size
    weights.initialise(model, "imagenet")
    assert torch.equal(model.body.features[0][0].weight, state["features.0.0.weight"])
    assert "body.classifier.3.weight" not in model.state_dict()  # the classifier is gone


def test_timm_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(published, "reachable", lambda host: False)
    full = timm.create_model("test_resnet")  # as published, with its classifier
    repo = tmp_path / "models--timm--test_resnet.r160_in1k"  # the cache's layout
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(repo / "snapshots" / "abc" / "model.safetensors"))
    model = build_backbone("timm", 1, 16, model="test_resnet", weights="imagenet")
    assert model.input_size == 160 and model.input_normalization == ([0.5] * 3, [0.5] * 3)  # its pretrained_cfg
    weights.initialise(model, "imagenet")
    for k, v in model.body.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k


def test_offline_without_cache_is_one_sentence_naming_the_file(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(published, "reachable", lambda host: False)  # never download in tests
    for option, kw, where in (("torchvision", {"model": "mobilenet_v3_small"},
                               tmp_path / "torch" / "hub" / "checkpoints" / TORCHVISION_FILE),
                              ("timm", {"model": "test_resnet"}, tmp_path / "hf" / "models--timm--test_resnet")):
        model = build_backbone(option, 3, 16, **kw)
        t0 = time.perf_counter()
        with pytest.raises(UserError) as err:
            weights.initialise(model, "imagenet")
        assert time.perf_counter() - t0 < 2
        text = str(err.value)
        assert str(where) in text and "backbone.weights=<path>" in text and text.count(". ") == 0
        node = {"_target_": f"metafsl.models.pretrained.{option}_backbone", "weights": "imagenet",
                "model": kw["model"]}
        with pytest.raises(UserError, match="cannot be reached"):  # the same check before any data loads
            weights.check_available(node)
    with pytest.raises(UserError, match="no such file"):
        weights.check_available({"_target_": "metafsl.models.conv4.conv4", "weights": str(tmp_path / "x.pth")})


def test_weight_files_load_pth_safetensors_and_full_model_state(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    full = timm.create_model("test_resnet", num_classes=10)  # the library's own layout, classifier included
    torch.save({"state_dict": full.state_dict()}, tmp_path / "full.pth")
    fresh = build_backbone("timm", 3, 16, model="test_resnet")
    weights.initialise(fresh, str(tmp_path / "full.pth"))
    assert torch.equal(fresh.body.conv1[0].weight, full.conv1[0].weight)
    save_file({k: v.contiguous() for k, v in fresh.state_dict().items()}, str(tmp_path / "w.safetensors"))
    other = build_backbone("timm", 3, 16, model="test_resnet")
    weights.initialise(other, str(tmp_path / "w.safetensors"))
    for k, v in fresh.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_a_run_dirs_backbone_initialises_another_learner_and_mismatch_is_one_sentence(tmp_path):
    torch.manual_seed(2)
    trained = ProtoNet(build_backbone("conv4", 1, 16, hidden=8, layers=2))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"format": "metafsl-checkpoint", "model": trained.state_dict()},
               tmp_path / "run" / "checkpoints" / "best.pt")
    fresh = build_backbone("conv4", 1, 16, hidden=8, layers=2)
    weights.initialise(fresh, str(tmp_path / "run"))
    for k, v in trained.backbone.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    with pytest.raises(UserError, match="does not fit backbone .*of another shape"):
        weights.initialise(build_backbone("conv4", 1, 16, hidden=4, layers=2), str(tmp_path / "run"))
    with pytest.raises(UserError, match="no published weights"):
        weights.initialise(fresh, "imagenet")


def _batch(channels=3, size=16, n_way=2):
    x = torch.rand(1, 2 * n_way, channels, size, size)
    y = torch.arange(n_way).repeat(2)[None]
    return TaskBatch(x[:, :n_way], y[:, :n_way], x[:, n_way:], y[:, n_way:], n_way, 1, 1)


def test_frozen_backbone_does_not_change_and_backbone_lr_is_its_own_group():
    torch.manual_seed(0)
    algo = ProtoNet(weights.freeze(build_backbone("timm", 3, 16, model="test_resnet")))
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    algo.train()
    loss, _ = algo.meta_loss(_batch())
    assert not loss.requires_grad  # nothing to differentiate
    assert all(torch.equal(v, algo.state_dict()[k]) for k, v in before.items())  # BN statistics too
    trainable = SimpleShot(build_backbone("timm", 3, 16, model="test_resnet"))
    groups = parameter_groups(trainable, 1e-5)
    assert groups[1]["lr"] == 1e-5 and len(groups[1]["params"]) == len(list(trainable.backbone.parameters()))
    opt = torch.optim.SGD(groups, lr=0.1)
    opt.zero_grad()
    trainable.train()
    trainable.meta_loss(_batch())[0].backward()
    w = trainable.backbone.body.conv1[0].weight
    old = w.detach().clone()
    opt.step()
    torch.testing.assert_close(old - w.detach(), 1e-5 * w.grad)


def test_simpleshot_centres_normalises_and_takes_the_nearest_centroid():
    identity = torch.nn.Identity()
    identity.out_features = 2
    algo = SimpleShot(identity, temperature=1.0)
    algo.prepare_training_images([torch.tensor([[1.0, 1.0], [3.0, 1.0]]), torch.tensor([[2.0, 4.0]])])
    assert torch.equal(algo.train_mean, torch.tensor([2.0, 2.0]))
    support = torch.tensor([[[5.0, 2.0], [2.0, 6.0], [2.0, 0.5]]])  # centred: (3,0) (0,4) (0,-1.5)
    labels = torch.tensor([[0, 1, 1]])
    query = torch.tensor([[[4.0, 3.0]]])  # centred (2, 1), normalised (2, 1)/sqrt(5)
    # CL2N support: (1, 0); (0, 1) and (0, -1) -> class 1 centroid (0, 0)
    q = torch.tensor([2.0, 1.0]) / 5 ** 0.5
    expected = -torch.stack([((q - torch.tensor([1.0, 0.0])) ** 2).sum(), (q ** 2).sum()])
    torch.testing.assert_close(algo.logits_from_embeddings(support, labels, query, 2)[0, 0], expected)
    assert algo.logits_from_embeddings(support, labels, query, 2)[0, 0].argmax() == 0
    algo.train_mean.zero_()  # without centring the nearest centroid is the other class
    assert algo.logits_from_embeddings(support, labels, query, 2)[0, 0].argmax() == 1


@pytest.fixture(scope="module")
def simpleshot_run(tmp_path_factory, hub):
    """``trainer.iterations=0``: a frozen "ImageNet" mobilenet_v3_small (from the test's hub cache) + SimpleShot."""
    from metafsl.cli import main

    run = tmp_path_factory.mktemp("runs") / "simpleshot"
    code = main(["train", "algo=simpleshot", *SMALL, "backbone.weights=imagenet",
                 "backbone.freeze=true", "backbone.input_size=16", "trainer.iterations=0",
                 "dataset.n_classes=40", "dataset.examples_per_class=6", "trainer.val_episodes=2",
                 "episode.train.n_query=2",
                 "eval.episodes=4", "episode.test.n_query=2", f"hydra.run.dir={run}"])
    assert code == 0
    return run


def test_iterations_zero_simpleshot_run_is_complete(simpleshot_run, hub, run_cli, tmp_path):
    from metafsl.engine import checkpoint

    ck = checkpoint.load(simpleshot_run / "checkpoints" / "best.pt")
    assert ck["preprocessing"]["channels"] == 1 and ck["preprocessing"]["mean"] == pytest.approx(
        [0.485, 0.456, 0.406])
    assert ck["model"]["train_mean"].abs().sum() > 0
    assert torch.equal(ck["model"]["backbone.body.features.0.0.weight"], hub[1]["features.0.0.weight"])
    assert ck["preprocessing"]["input_size"] == 16
    second = build_backbone("torchvision", 1, 28, model="mobilenet_v3_small", weights=str(simpleshot_run))
    # a second stage (backbone.weights=<run dir>) keeps the first stage's pipeline
    assert second.input_size == 16 and second.input_normalization[0] == pytest.approx([0.485, 0.456, 0.406])
    weights.initialise(second, str(simpleshot_run))
    assert torch.equal(second.body.features[0][0].weight, hub[1]["features.0.0.weight"])
    summary = json.loads((simpleshot_run / "summary.json").read_text())
    assert summary["train"]["iterations"] == 0 and summary["test"]["acc"] is not None
    code, out, err = run_cli("test", f"run={simpleshot_run}", "eval.episodes=2")
    assert code == 0, err
    for k in range(2):
        (tmp_path / "support" / f"c{k}").mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 60 + 120 * k, np.uint8)).save(tmp_path / "support" / f"c{k}" / "a.png")
    Image.fromarray(np.full((28, 28), 180, np.uint8)).save(tmp_path / "q.png")
    code, out, err = run_cli("predict", f"run={simpleshot_run}", f"support={tmp_path / 'support'}",
                             f"query={tmp_path / 'q.png'}")
    assert code == 0 and "c1" in out, err


def test_a_budget_keeps_an_evaluation_run_at_zero_iterations():
    from metafsl.api import apply_budget

    cfg = {"budget": 0.5, "trainer": {"iterations": 0, "val_every": 500, "log_every": 10}}
    assert apply_budget(cfg)["trainer"]["iterations"] == 0
