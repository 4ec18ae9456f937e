"""Cross-domain tests (issue 27): a glyphs run tested on BSCD-FSL layouts (other channels and
size), eval.bn, test-time fine-tuning, the four BSCD-FSL loaders on tiny fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TINY
from data_fixtures import CORRUPT, flat, png, write
from metafsl.algorithms.protonet import ProtoNet
from metafsl.algorithms.test_time import episode_statistics, finetuned, own_bn, resolve_bn
from metafsl.cli import main
from metafsl.data import bscdfsl
from metafsl.data.convert import convert_images
from metafsl.errors import UserError


# ----------------------------------------------------------------------------- fixtures
def eurosat(root: Path, n_classes: int = 5, per_class: int = 3) -> Path:
    for c in range(n_classes):
        for i in range(per_class):
            write(root / "2750" / f"Class{c}" / f"{c}_{i}.jpg", png(c * 10 + i, fmt="JPEG"))
    return root


def cropdisease(root: Path) -> Path:
    for c in range(3):
        for i in range(2):
            write(root / "dataset" / "train" / f"Plant___d{c}" / f"{i}.JPG", png(50 + c * 10 + i, fmt="JPEG"))
    write(root / "dataset" / "train" / "Plant___d0" / "broken.jpg", CORRUPT)
    return root


def isic(root: Path) -> Path:
    lines = ["image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"]
    for i, k in enumerate([0, 0, 1, 2, 6, 6]):
        hot = ["0.0"] * 7
        hot[k] = "1.0"
        lines.append(",".join([f"ISIC_{i:07d}", *hot]))
        write(root / bscdfsl.ISIC_IMAGES / f"ISIC_{i:07d}.jpg", png(70 + i, fmt="JPEG"))
    write(root / bscdfsl.ISIC_CSV, ("\n".join(lines) + "\n").encode())
    return root


def chestx(root: Path) -> Path:
    rows = [("a.png", "Atelectasis"), ("b.png", "Atelectasis"), ("c.png", "Effusion"), ("d.png", "Mass|Nodule"),
            ("e.png", "No Finding"), ("f.png", "Pneumonia"), ("g.png", "Pneumothorax"), ("h.png", "Hernia")]
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID"]
    for i, (name, labels) in enumerate(rows):
        lines.append(f"{name},{labels},0,{i}")
        write(root / "images" / name, png(90 + i, mode="L"))
    write(root / "Data_Entry_2017.csv", ("\n".join(lines) + "\n").encode())
    return root


@pytest.fixture(scope="session")
def glyphs_run(tmp_path_factory):
    """A tiny ProtoNet trained on glyphs (grey, 28x28)."""
    run = tmp_path_factory.mktemp("xd") / "protonet"
    assert main(["train", *TINY, "backbone.hidden=8", "trainer.iterations=2", "test=false",
                 f"hydra.run.dir={run}"]) == 0
    return run


TEST_ARGS = ["eval.episodes=3", "episode.test.n_query=2"]


# ----------------------------------------------------------------------------- the CLI
def test_cross_domain_test_converts_images_and_records_the_domain(run_cli, glyphs_run, tmp_path):
    root = eurosat(tmp_path / "eurosat")
    code, out, err = run_cli("test", f"run={glyphs_run}", "dataset=eurosat", f"dataset.root={root}", *TEST_ARGS)
    assert code == 0, err
    rec = json.loads((glyphs_run / "summary.json").read_text())["tests"][-1]
    assert (rec["dataset"], rec["train_dataset"], rec["bn"]) == ("eurosat", "glyphs", "inductive")
    assert "finetune" not in rec and rec["episodes"] == 3
    # fine-tuned and transductive tests of the same run, recorded as such
    code, _, err = run_cli("test", f"run={glyphs_run}", "dataset=eurosat", f"dataset.root={root}", *TEST_ARGS,
                           "eval.finetune_steps=2", "eval.bn=transductive")
    assert code == 0, err
    rec = json.loads((glyphs_run / "summary.json").read_text())["tests"][-1]
    assert rec["bn"] == "transductive" and rec["finetune"] == {"steps": 2, "lr": 0.001}
    code, out, _ = run_cli("results", str(glyphs_run), "format=md")
    assert code == 0 and "glyphs→eurosat" in flat(out)
    assert "transductivebatchnorm+fine-tuned2steps" in flat(out)


def test_training_on_a_test_only_dataset_is_one_sentence(run_cli, tmp_path):
    root = eurosat(tmp_path / "eurosat", n_classes=2, per_class=1)
    code, _, err = run_cli("train", "dataset=eurosat", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'r'}")
    assert code != 0 and "is test-only" in err and "Traceback" not in err


def test_missing_release_says_where_it_goes(tmp_path):
    for name in ("cropdisease", "eurosat", "isic", "chestx"):
        with pytest.raises(UserError, match="put the official release there") as exc:
            getattr(bscdfsl, f"load_{name}")(tmp_path / name)
        assert bscdfsl.RELEASES[name].split(" ")[0] in str(exc.value)


# ----------------------------------------------------------------------------- loaders
def test_bscdfsl_loaders_read_their_layouts(tmp_path):
    cache = str(tmp_path / "cache")
    crop = bscdfsl.load_cropdisease(cropdisease(tmp_path / "crop"), image_size=16, cache_dir=cache)
    assert list(crop.splits) == ["test"] and crop["test"].class_names == ["Plant___d0", "Plant___d1", "Plant___d2"]
    assert crop["test"].counts().tolist() == [2, 2, 2] and len(crop.skipped) == 1
    sat = bscdfsl.load_eurosat(eurosat(tmp_path / "sat"), image_size=16, cache_dir=cache)
    assert sat["test"].images.shape == (15, 3, 16, 16)
    skin = bscdfsl.load_isic(isic(tmp_path / "isic"), image_size=16, cache_dir=cache)
    assert skin["test"].class_names == ["MEL", "NV", "BCC", "VASC"]
    assert skin["test"].counts().tolist() == [2, 1, 1, 2]
    xray = bscdfsl.load_chestx(chestx(tmp_path / "chestx"), image_size=16, channels=3, cache_dir=cache)
    # multi-label, No Finding, Pneumonia and classes outside the seven are left out
    assert xray["test"].class_names == ["Atelectasis", "Effusion", "Pneumothorax"]
    assert xray["test"].counts().tolist() == [2, 1, 1]
    img = xray["test"].images[0]
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # grey repeated to RGB


def test_image_conversion_between_grey_and_rgb():
    rgb = torch.tensor([[[[255]], [[0]], [[0]]], [[[0]], [[0]], [[255]]]], dtype=torch.uint8)  # red, blue
    assert convert_images(rgb, 1, 1).flatten().tolist() == [76, 29]  # ITU-R 601 luma
    grey = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    out = convert_images(grey, 3, 2)
    assert out.shape == (1, 3, 2, 2) and torch.equal(out[:, 0], out[:, 2])
    with pytest.raises(UserError, match="only grey"):
        convert_images(torch.zeros(1, 4, 2, 2, dtype=torch.uint8), 3, 2)


# ----------------------------------------------------------------------------- eval.bn, fine-tuning
def _protonet() -> ProtoNet:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    algo = ProtoNet(backbone)
    with torch.no_grad():  # running statistics unlike any episode's
        algo.backbone[1].running_mean.fill_(0.5)
        algo.backbone[1].running_var.fill_(2.0)
    return algo.eval()


def _batch():
    from metafsl.data.sampler import TaskBatch

    g = torch.Generator().manual_seed(1)
    sx, qx = torch.randn(1, 4, 1, 5, 5, generator=g), torch.randn(1, 6, 1, 5, 5, generator=g)
    return TaskBatch(sx, torch.tensor([[0, 0, 1, 1]]), qx, torch.tensor([[0, 0, 0, 1, 1, 1]]), 2, 2, 3)


def test_transductive_batch_norm_uses_the_episode_statistics_and_restores():
    algo, batch = _protonet(), _batch()
    before = algo.episode_logits(batch)
    both = torch.cat([batch.support_x[0], batch.query_x[0]])
    with episode_statistics(algo.backbone, both):
        inside = algo.episode_logits(batch)
    assert torch.equal(algo.episode_logits(batch), before)  # running statistics restored
    assert algo.backbone[1].running_var.eq(2.0).all()
    reference = algo.backbone.train()(both)  # batch-statistics mode over support + query
    algo.eval()
    s, q = reference[:4][None], reference[4:][None]
    assert torch.allclose(inside, algo.logits_from_embeddings(s, batch.support_y, q, 2), atol=1e-5)
    assert not torch.allclose(inside, before)
    assert own_bn(algo) == "inductive" and resolve_bn(algo, "auto") == "inductive"


def test_maml_family_batch_statistics_named_and_refused_choices():
    from metafsl.algorithms.maml import MAML

    backbone = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5))
    backbone.out_features = 5
    maml = MAML(backbone, n_way=2)
    assert resolve_bn(maml, "auto") == "batch"
    with pytest.raises(UserError, match="keeps none"):
        resolve_bn(maml, "transductive", "MAML")
    from metafsl.algorithms.test_time import check_finetune

    with pytest.raises(UserError, match="metric learners"):
        check_finetune(maml, 3, "MAML")


def test_finetuning_changes_logits_and_leaves_the_model_unchanged():
    algo, batch = _protonet(), _batch()
    weights = {k: v.clone() for k, v in algo.state_dict().items()}
    plain = algo.episode_logits(batch)
    args = (batch.support_x[0], batch.support_y[0], 2)
    with finetuned(algo, *args, steps=0, lr=0.1):
        assert torch.equal(algo.episode_logits(batch), plain)
    with finetuned(algo, *args, steps=3, lr=0.5, generator=torch.Generator().manual_seed(0)):
        tuned = algo.episode_logits(batch)
    assert not torch.allclose(tuned, plain)
    assert all(torch.equal(v, algo.state_dict()[k]) for k, v in weights.items())
    assert all(p.requires_grad for p in algo.parameters())


def test_per_episode_path_without_adaptation_equals_todays_evaluation():
    """The per-episode loop (taken for eval.bn=transductive or fine-tuning) gives, with neither,
    the predictions of the default (fast) evaluation: the adapted paths differ only by their
    adaptation."""
    from metafsl.data.base import FewShotSplit
    from metafsl.data.sampler import EpisodeSampler, Preprocess
    from metafsl.engine import episode_adapt
    from metafsl.engine.evaluate import EvalSpec, predict_episodes

    g = torch.Generator().manual_seed(2)
    split = FewShotSplit(torch.randint(0, 256, (24, 1, 5, 5), generator=g, dtype=torch.uint8),
                         torch.arange(4).repeat_interleave(6), ["a", "b", "c", "d"])
    algo, spec = _protonet(), EvalSpec(3, 2, 2, episodes=5, seed=3)
    today = predict_episodes(algo, split, spec, preprocess=Preprocess()).predicted
    sampler = EpisodeSampler(split, 3, 2, 2, seed=3, preprocess=Preprocess())
    looped = episode_adapt.episode_predictions(algo, sampler, sampler.indices(5), spec)
    assert torch.equal(today, looped)
    tuned = EvalSpec(3, 2, 2, episodes=5, seed=3, bn="transductive")
    assert tuned.per_episode and predict_episodes(algo, split, tuned, preprocess=Preprocess()).predicted.shape == (5, 6)


def test_table_of_tests_of_a_run(run_cli, glyphs_run, tmp_path):
    root = eurosat(tmp_path / "eurosat")
    table = tmp_path / "xd.yaml"
    table.write_text("title: cross-domain\ntest_of_run: true\n"
                     f"overrides: [dataset=eurosat, dataset.root={root}, eval.episodes=2, episode.test.n_query=2]\n"
                     "rows:\n  - {label: sat_1s, overrides: [episode.test.n_shot=1]}\n")
    code, _, err = run_cli("reproduce", f"table={table}", f"out={tmp_path / 'out'}")
    assert code == 2 and "run=<run dir>" in err
    code, out, err = run_cli("reproduce", f"table={table}", f"run={glyphs_run}", f"out={tmp_path / 'out'}",
                             "eval.bn=transductive")
    assert code == 0, err
    row = json.loads((tmp_path / "out" / "sat_1s" / "summary.json").read_text())
    assert row["test"]["dataset"] == "eurosat" and row["test"]["train_dataset"] == "glyphs"
    assert row["test"]["bn"] == "transductive" and row["test"]["episode"]["n_shot"] == 1
    assert "eurosat" in (tmp_path / "out" / "table.csv").read_text()


def _glyph_support(support: Path) -> Path:
    """A support folder of 3 glyph classes, 2 PNGs each."""
    from PIL import Image

    from metafsl.data import glyphs

    split = glyphs.generate(n_classes=20, examples_per_class=3, image_size=28, seed=7)["test"]
    for k in range(3):
        (support / f"c{k}").mkdir(parents=True)
        for j, i in enumerate(torch.nonzero(split.labels == k).flatten().tolist()[:2]):
            Image.fromarray(split.images[i, 0].numpy()).save(support / f"c{k}" / f"{j}.png")
    return support


def test_predict_fine_tunes_on_the_support_set(run_cli, glyphs_run, tmp_path):
    support = _glyph_support(tmp_path / "support")
    probs = []
    for steps in (0, 3):
        out = tmp_path / f"p{steps}.csv"
        code, _, err = run_cli("predict", f"run={glyphs_run}", f"support={support}", f"query={support}",
                               f"out={out}", f"eval.finetune_steps={steps}", "eval.finetune_lr=0.5")
        assert code == 0, err
        probs.append(out.read_text())
    assert probs[0] != probs[1]
    code, _, err = run_cli("predict", f"run={glyphs_run}", f"support={support}", f"query={support}",
                           "eval.finetune_steps=-1")
    assert code == 2 and "eval.finetune_steps must be" in err
    code, _, err = run_cli("predict", f"run={glyphs_run}", f"support={support}", f"query={support}",
                           "eval.finetune_steps=2", "eval.finetune_views=train")
    assert code == 2 and "dataset.augment is none" in err and "Traceback" not in err
    code, _, err = run_cli("predict", f"run={glyphs_run}", f"support={support}", f"query={support}",
                           "eval.finetune_steps=2", "eval.finetune_views=mirror")
    assert code == 2 and "eval.finetune_views must be one of flip_shift, train" in err


def test_fine_tuning_views_drawn_by_the_training_augmentation(run_cli, tmp_path):
    """eval.finetune_views=train: episodes (and predict) fine-tune on views drawn by the run's own
    dataset.augment (Koch et al.'s distortions here) instead of flips and shifts."""
    run = tmp_path / "koch"
    assert main(["train", *TINY, "backbone.hidden=8", "trainer.iterations=2", "test=false", "dataset.augment=koch",
                 f"hydra.run.dir={run}"]) == 0
    records = []
    for views in ("flip_shift", "train"):
        code, _, err = run_cli("test", f"run={run}", *TEST_ARGS, "eval.finetune_steps=2", "eval.finetune_lr=0.5",
                               f"eval.finetune_views={views}")
        assert code == 0, err
        records.append(json.loads((run / "summary.json").read_text())["tests"][-1])
    assert records[0]["finetune"] == {"steps": 2, "lr": 0.5}  # the default views: the record as before
    assert records[1]["finetune"] == {"steps": 2, "lr": 0.5, "views": "train"}
    support = _glyph_support(tmp_path / "support")
    probs = []
    for views in ("flip_shift", "train"):
        out = tmp_path / f"{views}.csv"
        code, _, err = run_cli("predict", f"run={run}", f"support={support}", f"query={support}", f"out={out}",
                               "eval.finetune_steps=3", "eval.finetune_lr=0.5", f"eval.finetune_views={views}")
        assert code == 0, err
        probs.append(out.read_text())
    assert probs[0] != probs[1]


def test_training_refuses_fine_tuning_views_without_an_augmentation(run_cli, tmp_path):
    """The final test would fine-tune on views of dataset.augment: refused before the training, not after."""
    run = tmp_path / "run"
    code, _, err = run_cli("train", *TINY, "eval.finetune_steps=2", "eval.finetune_views=train",
                           f"hydra.run.dir={run}")
    assert code == 2 and "dataset.augment is none" in err and "Traceback" not in err
    assert not run.exists()
