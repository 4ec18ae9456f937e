"""`metafsl tasks`: task embeddings (their math on tiny tensors), the episodes and groups of the
map, the PCA, and the command end to end on a tiny glyphs run (the map, its files, a user's task
among training tasks, the one-sentence errors)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY
from metafsl.algorithms.base import mean_prototype
from metafsl.data.base import FewShotSplit
from metafsl.data.sampler import EpisodeSampler
from metafsl.engine import task_map
from metafsl.engine.evaluate import EvalSpec


# ----------------------------------------------------------------------------- math
def test_mean_prototype_weighs_every_class_the_same():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 4.0]])  # class 0 twice, class 1 once
    torch.testing.assert_close(mean_prototype(z, torch.tensor([0, 0, 1]), 2), torch.tensor([2.5, 2.0]))


def learner(name: str):
    """A 3-way method on a tiny conv4, in eval mode."""
    from metafsl.engine.components import build_learner
    from metafsl.options import shipped_option

    torch.manual_seed(0)
    cfg = {"backbone": {**shipped_option("backbone", "conv4"), "hidden": 6, "layers": 2},
           "algo": shipped_option("algo", name), "episode": {"train": {"n_way": 3}}}
    return build_learner(cfg, channels=1, image_size=12).eval()


def test_a_gradient_learner_embeds_a_task_by_its_weight_change():
    """MAML with one test step of size a: the change is -a * the support loss's gradient; ANIL's
    is its head's alone."""
    algo = learner("maml")
    algo.test_inner_steps, algo.test_inner_lr = 1, 0.3
    x, y = torch.rand(6, 1, 12, 12), torch.arange(3).repeat_interleave(2)
    net = algo.l2l_model.module
    loss = torch.nn.functional.cross_entropy(net(x), y)
    grads = dict(zip([n for n, _ in net.named_parameters()], torch.autograd.grad(loss, list(net.parameters()))))
    expected = torch.cat([-0.3 * grads[k].flatten() for k in sorted(grads)])
    torch.testing.assert_close(algo.task_embedding(x, y), expected, rtol=1e-4, atol=1e-7)
    anil = learner("anil")
    assert anil.task_embedding(x, y).numel() == sum(p.numel() for p in anil.head.parameters())


def test_pca_finds_the_main_axes_and_places_new_points_with_them():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g) * torch.tensor([5.0, 1.0, 0.01]) + torch.tensor([1.0, 2.0, 3.0])
    proj = task_map.pca(x)
    assert proj.explained[0] > 0.9 > proj.explained[1] > 0.01
    torch.testing.assert_close(proj.axes.abs().argmax(0), torch.tensor([0, 1]))
    xy = proj(x)
    torch.testing.assert_close(xy.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    assert xy[:, 0].var() / xy[:, 1].var() > 10
    torch.testing.assert_close(proj(x[:1] + torch.tensor([[1.0, 0.0, 0.0]]))[0, 0] - xy[0, 0], torch.tensor(1.0),
                               atol=0.05, rtol=0)


def test_long_embeddings_are_sketched_keeping_their_distances():
    sketch = task_map.Sketch(dims=4096, limit=1000)
    short = torch.rand(1000)
    assert sketch(short) is short and not sketch.used
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(200_000, generator=g) for _ in range(3))
    c = a + 0.1 * c  # near a
    sa, sb, sc = sketch(a), sketch(b), sketch(c)
    assert sa.shape == (4096,) and sketch.used and torch.equal(sketch(a), sa)
    for x, y, sx, sy in ((a, b, sa, sb), (a, c, sa, sc)):
        assert abs(float((sx - sy).norm() / (x - y).norm()) - 1) < 0.1


# ----------------------------------------------------------------------------- episodes
def grouped_split() -> FewShotSplit:
    """12 classes of 4 images in 3 groups (alphabets) of 4 classes."""
    images = torch.randint(0, 255, (48, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return FewShotSplit(images, torch.arange(12).repeat_interleave(4), [f"c{i}" for i in range(12)],
                        torch.arange(3).repeat_interleave(4), ["Greek", "Latin", "Runic"])


def test_the_map_draws_the_test_episodes_then_episodes_within_one_group():
    split = grouped_split()
    spec = EvalSpec(3, 1, 1, episodes=10, seed=7)
    drawn = task_map.draw(split, spec, 0.4, "omniglot", "cpu", None, "test")
    same_as_a_test = EpisodeSampler(split, 3, 1, 1, seed=7).indices(6)
    assert torch.equal(drawn.indices[:6], same_as_a_test)
    assert drawn.ids[:2] == ["test-0000", "test-0001"] and len(drawn.groups) == 10
    for group, classes in zip(drawn.groups, drawn.classes):
        of = {"Greek" if int(c[1:]) < 4 else "Latin" if int(c[1:]) < 8 else "Runic" for c in classes}
        assert group == (of.pop() if len(of) == 1 else task_map.MIXED)
    assert set(drawn.groups[6:]) <= {"Greek", "Latin", "Runic"} and task_map.MIXED in drawn.groups[:6]
    plain = FewShotSplit(split.images, split.labels, split.class_names)  # no groups: the dataset names them
    assert set(task_map.draw(plain, spec, 0.4, "glyphs", "cpu", None, "test").groups) == {"glyphs"}


# ----------------------------------------------------------------------------- the command
@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from metafsl.cli import main

    run = tmp_path_factory.mktemp("run") / "protonet"
    assert main(["train", *TINY, "backbone.hidden=8", "trainer.iterations=2", "test=false",
                 f"hydra.run.dir={run}"]) == 0
    return run


def support_folder(root: Path, n_classes: int = 5, shots: int = 2) -> Path:
    g = torch.Generator().manual_seed(3)
    for c in range(n_classes):
        (root / f"mine{c}").mkdir(parents=True)
        for i in range(shots):
            pixels = (torch.rand(28, 28, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels, "L").save(root / f"mine{c}" / f"{i}.png")
    return root


def tasks_cli(run_cli, run: Path, *args: str):
    """(exit code, stdout, stderr, the one folder the command added under ``<run>/tasks``)."""
    before = set((run / "tasks").iterdir()) if (run / "tasks").exists() else set()
    code, out, err = run_cli("tasks", f"run={run}", *args)
    assert code == 0, err
    (folder,) = set((run / "tasks").iterdir()) - before
    return code, out, err, folder


def read_csv(path: Path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_tasks_writes_the_map_of_the_test_episodes(run_cli, tiny_run):
    code, out, err, folder = tasks_cli(run_cli, tiny_run, "episodes=6", "listed=2", "nearest=2")
    rows = read_csv(folder / "task_map.csv")
    assert [r["episode"] for r in rows] == [f"test-{i:04d}" for i in range(6)]
    assert {r["group"] for r in rows} == {"glyphs"} and {r["split"] for r in rows} == {"test"}
    assert all(len(r["classes"].split(";")) == 5 for r in rows)  # 5-way episodes
    assert len({(r["x"], r["y"]) for r in rows}) == 6
    assert (folder / "task_map.png").read_bytes()[:4] == b"\x89PNG"
    near = read_csv(folder / "nearest.csv")
    assert [(r["episode"], r["rank"]) for r in near] == [("test-0000", "1"), ("test-0000", "2"),
                                                         ("test-0001", "1"), ("test-0001", "2")]
    assert all(r["neighbour"] != r["episode"] for r in near)
    assert near[0]["neighbour"] in out and "Nearest tasks" in out and str(folder) in out


def test_tasks_places_your_task_among_the_training_tasks(run_cli, tiny_run, tmp_path):
    support = support_folder(tmp_path / "support")
    code, out, err, folder = tasks_cli(run_cli, tiny_run, "episodes=4", f"support={support}", "listed=0")
    rows = read_csv(folder / "task_map.csv")
    assert [r["split"] for r in rows] == ["test"] * 4 + ["train"] * 4 + ["user"]
    assert rows[-1]["classes"] == "mine0;mine1;mine2;mine3;mine4"
    named = [r for r in read_csv(folder / "nearest.csv") if r["episode"] == "user"]
    train_ids = {r["episode"] for r in rows if r["split"] == "train"}
    assert len(named) == 3 and {r["neighbour"] for r in named} <= train_ids
    assert [float(r["distance"]) for r in named] == sorted(float(r["distance"]) for r in named)
    assert "Training tasks nearest to your task" in out and named[0]["neighbour"] in out


def test_tasks_says_what_is_wrong_before_any_work(run_cli, tiny_run, tmp_path):
    before = sorted((tiny_run / "tasks").iterdir()) if (tiny_run / "tasks").exists() else []
    cases = [(["run=" + str(tmp_path / "nope")], "does not exist"),
             ([f"run={tiny_run}", "episodes=1"], "episodes must be an integer >= 2"),
             ([f"run={tiny_run}", f"support={tmp_path / 'missing'}"], "is not a folder"),
             ([f"run={tiny_run}", f"support={support_folder(tmp_path / 'one', n_classes=1)}"], "at least 2 class"),
             ([], "needs the run")]
    for args, words in cases:
        code, _, err = run_cli("tasks", *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert (sorted((tiny_run / "tasks").iterdir()) if (tiny_run / "tasks").exists() else []) == before


def test_tasks_is_listed_in_the_help(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "tasks" in out and "a map of tasks" in out
    code, out, _ = run_cli("tasks", "--help")
    assert code == 0 and "support=<dir>" in out and "metafsl tasks run=" in out
