"""Issue 30's levers: Koch et al.'s distortions and stroke-width augmentation, test-time
augmentation (eval.tta, also in protocol=lake20), MAML++'s derivative-order annealing, and the
presets (lake2015_*, maml_omniglot_cpu_*, tiny_fewshot_cpu_*) run end to end on tiny data."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import data_fixtures as fx
from metafsl import config
from metafsl.algorithms.baseline import BaselinePP
from metafsl.algorithms.maml import MAML
from metafsl.algorithms.protonet import ProtoNet
from metafsl.data import augment
from metafsl.data.sampler import EpisodeSampler, Preprocess
from metafsl.engine import fast_eval
from metafsl.engine.evaluate import EvalSpec, check_transductive, predict_episodes
from metafsl.engine.protocols import run_accuracy
from metafsl.errors import UserError
from metafsl.models.conv4 import conv4
from test_sampler import make_split


def glyphs(n=6, size=16, seed=0):
    """Bright strokes on black: a few random horizontal and vertical bars per image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    for i in range(n):
        r, c = torch.randint(3, size - 3, (2,), generator=g).tolist()
        x[i, 0, r, 2:-2] = 1.0
        x[i, 0, 2:-2, c] = 1.0
    return x


def test_augment_choices_are_the_configs():
    assert set(augment.AUGMENTATIONS) == set(config.RULES["dataset.augment"].choices)


@pytest.mark.parametrize("name", ["koch", "stroke", "koch_stroke"])
def test_augmentations_keep_shape_and_range_change_images_and_follow_the_seed(name):
    x = glyphs()
    a = augment.apply(name, x.clone(), torch.Generator().manual_seed(3))
    b = augment.apply(name, x.clone(), torch.Generator().manual_seed(3))
    c = augment.apply(name, x.clone(), torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - x).abs().amax(dim=(1, 2, 3)).gt(1e-3).sum() >= 3  # most images changed
    p = Preprocess(augment=name)  # the training pipeline: augmented at training only
    u8 = (x * 255).to(torch.uint8)
    assert torch.equal(p(u8, train=False), u8.float() / 255) and not torch.equal(p(u8, train=True), u8.float() / 255)


def test_stroke_width_grows_and_shrinks_the_ink():
    x = glyphs()
    ink = x.sum(dim=(1, 2, 3))
    thick = augment.stroke_width(x, torch.ones(len(x))).sum(dim=(1, 2, 3))
    thin = augment.stroke_width(x, -torch.ones(len(x))).sum(dim=(1, 2, 3))
    half = augment.stroke_width(x, torch.full((len(x),), 0.5)).sum(dim=(1, 2, 3))
    assert (thick > ink).all() and (thin < ink).all() and ((half > ink) & (half < thick)).all()
    assert torch.equal(augment.stroke_width(x, torch.zeros(len(x))), x)


def test_the_stroke_jitter_scales_with_the_image_side():
    """The amount drawn is scaled by side / 105: at 28x28 the strongest erosion blends in 28/105 of
    the 3x3 min-pool (at 105x105 all of it), so it never erases a character."""
    for side, scale in ((28, 28 / 105), (105, 1.0), (140, 1.0)):
        x = torch.rand(64, 1, side, side)
        got = augment.random_stroke(x.clone(), torch.Generator().manual_seed(0))
        amount = torch.empty(64).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(got, augment.stroke_width(x, scale * amount)), side
    x = glyphs(n=64, size=28)
    thinnest = augment.random_stroke(x, torch.Generator().manual_seed(1)).sum(dim=(1, 2, 3))
    assert (thinnest > 0.7 * x.sum(dim=(1, 2, 3))).all()  # unscaled: down to nothing


def test_koch_matrices_stay_near_the_identity():
    m = augment.koch_matrices(2000, torch.Generator().manual_seed(0))
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    dev = (m - eye).abs()
    assert dev[:, :, :2].amax() < 0.8 and dev[:, :, 2].amax() < 0.1  # scale, shear, rotation; shift
    assert 0.01 < float((dev.amax(dim=(1, 2)) < 1e-6).float().mean()) < 0.1  # 1/32: no component drawn


def test_tta_views_are_fixed_shifts_and_flips():
    x = torch.arange(2 * 28 * 28, dtype=torch.float).view(2, 1, 28, 28)
    views = augment.tta_views(x, augment.MAX_VIEWS)
    assert len(views) == 10 and torch.equal(views[0], x) and torch.equal(views[5], x.flip(-1))
    assert torch.equal(views[1][..., 1:], x[..., :-1]) and views[1][..., 0].abs().sum() == 0
    assert len(augment.tta_views(x, 3)) == 3


def test_rotation_turns_turn_support_and_queries_alike():
    assert set(augment.ROTATION_VIEWS) == set(config.RULES["eval.tta_rotations"].choices)
    assert [augment.rotation_turns(n) for n in (1, 2, 4)] == [[0], [0, 2], [0, 1, 2, 3]]
    split = make_split(n_classes=5, per_class=(3,), size=16)
    task = EpisodeSampler(split, 3, 1, 2, seed=0).sample(2)
    half = augment.turned_task(task, 2)
    assert torch.equal(half.support_x, task.support_x.flip(-1).flip(-2)) and torch.equal(half.query_y, task.query_y)
    assert torch.equal(augment.turned_task(task, 1).query_x, torch.rot90(task.query_x, 1, (-2, -1)))
    assert augment.turned_task(task, 0) is task


def _expected_over_turns(learner, task, n):
    """The predictions of eval.tta_rotations=n written out: each turn's softmax, averaged."""
    probs = sum(learner.episode_logits(augment.turned_task(task, k)).softmax(-1)
                for k in augment.rotation_turns(n)) / len(augment.rotation_turns(n))
    return probs.argmax(-1)


@pytest.mark.parametrize("path", ["fast", "episode_loop"])
def test_rotation_views_average_each_turns_probabilities(monkeypatch, path):
    """Both evaluation paths predict as the turns' averaged softmax does, and (this seed) not as the
    upright episodes alone do, so a path that ignored the turns would fail."""
    monkeypatch.setattr(fast_eval, "frozen_for_inference", lambda backbone, example: backbone)  # (slow to trace)
    if path == "episode_loop":
        monkeypatch.setattr(fast_eval, "supported", lambda algorithm: False)
    learner = _protonet(2)
    split = make_split(n_classes=8, per_class=(4,), size=16)
    spec = EvalSpec(4, 1, 3, episodes=12, seed=0, tta_rotations=4)
    got = predict_episodes(learner, split, spec).predicted
    tasks = EpisodeSampler(split, 4, 1, 3, seed=0).tasks(EpisodeSampler(split, 4, 1, 3, seed=0).indices(12))
    with torch.no_grad():
        assert torch.equal(got, _expected_over_turns(learner, tasks, 4))
        assert not torch.equal(got, learner.episode_logits(tasks).argmax(-1))
    assert torch.equal(predict_episodes(learner, split, dataclasses.replace(spec, tta_rotations=1)).predicted,
                       predict_episodes(learner, split, dataclasses.replace(spec, tta_rotations=1, tta=1)).predicted)


def test_lake_runs_with_rotation_views():
    learner = _protonet(2)
    split = make_split(n_classes=20, per_class=(2,), size=16)
    task = EpisodeSampler(split, 20, 1, 1, seed=0).sample(1)
    with torch.no_grad():
        for n in (2, 4):
            expected = float((_expected_over_turns(learner, task, n) == task.query_y).float().mean())
            assert run_accuracy(learner, task, 1, n) == pytest.approx(expected)


def _protonet(seed=0):
    torch.manual_seed(seed)
    return ProtoNet(conv4(channels=1, image_size=16, hidden=8)).eval()


def _embeddings_seen(learner, tta):
    """The support embeddings the fast evaluation path hands to the classification rule."""
    seen = []

    def rule(support, support_y, query, n_way):
        seen.append(support)
        return learner.logits_from_embeddings(support, support_y, query, n_way)

    split = make_split(n_classes=6, per_class=(4,), size=16)
    sampler = EpisodeSampler(split, 3, 1, 2, seed=0)
    fast_eval.episode_predictions(learner, sampler, split.images, sampler.indices(4), 64, 2, rule=rule, tta=tta)
    return torch.cat(seen)


def test_tta_of_one_is_the_plain_path_and_more_views_change_the_embeddings(monkeypatch):
    monkeypatch.setattr(fast_eval, "frozen_for_inference", lambda backbone, example: backbone)  # (slow to trace)
    learner = _protonet()
    plain = _embeddings_seen(learner, 1)
    assert torch.allclose(_embeddings_seen(learner, 1), plain)
    assert not torch.allclose(_embeddings_seen(learner, 5), plain, rtol=1e-3, atol=0)
    split = make_split(n_classes=6, per_class=(4,), size=16)
    spec = EvalSpec(3, 1, 2, episodes=4, seed=0)
    base = predict_episodes(learner, split, spec).predicted
    assert torch.equal(predict_episodes(learner, split, dataclasses.replace(spec, tta=1)).predicted, base)


def test_lake_runs_with_tta():
    learner = _protonet()
    split = make_split(n_classes=5, per_class=(2,), size=16)
    task = EpisodeSampler(split, 5, 1, 1, seed=0).sample(1)
    plain = run_accuracy(learner, task, 1)
    assert plain == pytest.approx(float(learner.evaluate(task).float()[0]))
    views = lambda x: torch.stack([learner.embed(v) for v in augment.tta_views(x, 3)]).mean(0)  # noqa: E731
    logits = learner.logits_from_embeddings(views(task.support_x[0])[None], task.support_y,
                                            views(task.query_x[0])[None], 5)
    assert run_accuracy(learner, task, 3) == pytest.approx(float((logits.argmax(-1) == task.query_y).float().mean()))


def test_a_lake_ensemble_averages_the_models_probabilities(tmp_path):
    from metafsl.data.lake_runs import read_runs
    from metafsl.engine.protocols import run_logits, score_runs

    runs = read_runs(fx.lake_runs(tmp_path / "runs.zip", n_runs=2, ways=5), 16)
    a, b, pre = _protonet(0), _protonet(1), Preprocess()
    res = score_runs(a, runs, pre, "cpu", others=[(b, runs, pre, "cpu")])
    for run in runs:
        task = run.task(pre, "cpu")
        probs = (run_logits(a, task).softmax(-1) + run_logits(b, task).softmax(-1)) / 2
        expected = 100 * (1 - float((probs.argmax(-1) == task.query_y).float().mean()))
        assert res["per_run_error"][run.name] == pytest.approx(round(expected, 2))
    alone = score_runs(a, runs, pre, "cpu")
    assert alone == score_runs(a, runs, pre, "cpu", others=[(a, runs, pre, "cpu")])  # itself twice: the same


def test_tta_needs_a_metric_learner_or_a_transfer_baseline():
    cfg = {"algo": {"_target_": "metafsl.algorithms.maml.MAML", "name": "maml"}, "eval": {"tta": 3}}
    with pytest.raises(UserError, match="eval.tta=3"):
        check_transductive(cfg)
    check_transductive({**cfg, "eval": {"tta": 1}})
    for target in ("baseline.Baseline", "baseline.BaselinePP", "protonet.ProtoNet"):
        check_transductive({"algo": {"_target_": f"metafsl.algorithms.{target}"}, "eval": {"tta": 3}})


def _baselinepp(seed=0):
    torch.manual_seed(seed)
    return BaselinePP(conv4(channels=1, image_size=16, hidden=8), finetune_epochs=3).eval()


def test_a_transfer_baseline_fits_its_heads_on_embeddings_averaged_over_the_views(monkeypatch):
    """eval.tta for Baseline / Baseline++: each support and query embedding is the mean of the
    backbone's embeddings of ``tta`` fixed views, then the heads are fitted on them as without TTA."""
    learner, split = _baselinepp(), make_split(n_classes=6, per_class=(4,), size=16)
    spec = EvalSpec(3, 1, 2, episodes=4, seed=0, batch_episodes=2)
    seen, fit = [], learner.logits_from_embeddings

    def recorded(support, support_y, query, n_way):
        seen.append((support, query))
        return fit(support, support_y, query, n_way)

    monkeypatch.setattr(learner, "logits_from_embeddings", recorded)
    plain = predict_episodes(learner, split, spec).predicted
    plain_seen = seen[:]
    seen.clear()
    predicted = predict_episodes(learner, split, dataclasses.replace(spec, tta=3)).predicted
    assert predicted.shape == plain.shape and len(seen) == len(plain_seen) == 2  # two batches of two episodes
    sampler = EpisodeSampler(split, 3, 1, 2, seed=0)
    batch = sampler.tasks(sampler.indices(4)[:2])
    with torch.no_grad():
        views = lambda x: torch.stack([learner.backbone(v) for v in augment.tta_views(x.flatten(0, 1), 3)]).mean(0)  # noqa: E731
        assert torch.allclose(seen[0][0].flatten(0, 1), views(batch.support_x), atol=1e-6)
        assert torch.allclose(seen[0][1].flatten(0, 1), views(batch.query_x), atol=1e-6)
        alone = learner.backbone(batch.support_x.flatten(0, 1))
        assert torch.allclose(plain_seen[0][0].flatten(0, 1), alone, atol=1e-6)  # tta=1: the images alone
        assert not torch.allclose(seen[0][0].flatten(0, 1), alone, rtol=1e-3, atol=0)
    again = predict_episodes(_baselinepp(), split, dataclasses.replace(spec, tta=3)).predicted
    assert torch.equal(again, predicted)  # the heads' random draws are seeded per batch, as without TTA


def test_a_transfer_baseline_on_lake_runs_with_tta():
    learner = _baselinepp()
    task = EpisodeSampler(make_split(n_classes=5, per_class=(2,), size=16), 5, 1, 1, seed=0).sample(1)
    views = lambda x: torch.stack([learner.backbone(v) for v in augment.tta_views(x, 3)]).mean(0)  # noqa: E731
    torch.manual_seed(1)
    with torch.no_grad():
        support, query = views(task.support_x[0])[None], views(task.query_x[0])[None]
    logits = learner.logits_from_embeddings(support, task.support_y, query, 5)
    torch.manual_seed(1)  # the same head initialisation and mini-batch orders
    assert run_accuracy(learner, task, 3) == pytest.approx(float((logits.argmax(-1) == task.query_y).float().mean()))


def _maml(**kw):
    torch.manual_seed(0)
    return MAML(conv4(channels=1, image_size=16, hidden=4), n_way=2, inner_steps=1, test_inner_steps=1, **kw)


def _meta_grads(learner, batch):
    learner.zero_grad()
    learner.meta_backward(batch)
    return [p.grad.clone() for p in learner.parameters() if p.grad is not None]


def test_derivative_order_annealing_is_first_order_then_second_order():
    batch = EpisodeSampler(make_split(n_classes=4, per_class=(3,), size=16), 2, 1, 1, seed=0).sample(2)
    da, fo, so = _maml(first_order_until=1), _maml(first_order=True), _maml()
    assert all(torch.allclose(a, b) for a, b in zip(_meta_grads(da, batch), _meta_grads(fo, batch)))
    first, second = _meta_grads(da, batch), _meta_grads(so, batch)  # DA's second iteration: second order
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(first, second))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(first, _meta_grads(fo, batch)))
    assert int(da.state_dict()["da_iteration"]) == 2 and "da_iteration" not in so.state_dict()
    with pytest.raises(UserError, match="first_order_until"):
        _maml(first_order=True, first_order_until=5)


def test_a_lake_preset_trains_and_is_scored_on_lake_runs_with_tta(tmp_path, run_cli):
    """experiment=lake2015_small1 (Koch's distortions, within-alphabet episodes), cut to a tiny
    run of exactly its iterations (not planned by the clock) on a fixture release, then its lake20
    test with eval.tta, alone and as an ensemble."""
    root = tmp_path / "data" / "omniglot"
    fx.omniglot_set(root, "images_background_small1", {"Greek": 2}, as_zip=True)
    fx.omniglot_set(root, "images_evaluation", {"Tengwar": 2}, as_zip=False)
    runs = fx.lake_runs(tmp_path / "runs.zip", n_runs=1, ways=3)
    run = tmp_path / "run"
    code, _, err = run_cli(
        "train", "experiment=lake2015_small1", f"paths.data_dir={root.parent}", "dataset.image_size=16",
        "dataset.lake_val_fraction=0.5", "episode.train.n_way=4", "episode.train.n_query=1",
        "episode.test.n_way=4", "trainer.iterations=2", "trainer.val_every=2", "trainer.val_episodes=2",
        "trainer.fit_to_budget=false", "eval.episodes=2", "backbone.hidden=4", f"hydra.run.dir={run}")
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["train"]["iterations"] == 2
    records = []
    for extra in ([], [f"protocol.ensemble=[{run}]"]):  # an ensemble of the run with itself: the same votes
        code, _, err = run_cli("test", f"run={run}", "protocol=lake20", f"protocol.root={runs}", "eval.tta=3", *extra)
        assert code == 0, err
        records.append(json.loads((run / "summary.json").read_text())["tests"][-1])
    assert records[0]["tta"] == 3 and records[0]["trials"] == 3 and records[0]["protocol"] == "lake20"
    assert records[1]["ensemble"] == [str(run)] and records[1]["per_run_error"] == records[0]["per_run_error"]


def _fidelity_script():
    """scripts/run_fidelity.py, loaded as a module."""
    from conftest import load_script

    return load_script("run_fidelity")


def test_run_fidelity_script_runs_the_presets_commands(capsys, tmp_path):
    """scripts/run_fidelity.py --dry-run: the exact commands, in order, for every goal and the ablation."""
    script = _fidelity_script()
    assert script.main(["all", "ablate-lake", "ablate-maml", "--dry-run", "--minutes", "5", "--out", str(tmp_path)]) == 0
    lines = [ln[2:] for ln in capsys.readouterr().out.splitlines() if ln.startswith("$ ")]
    trains = [ln.split()[2] for ln in lines if ln.startswith("metafsl train")]
    lake = [n for name in script.LAKE for n in (name, name)]  # each preset's run, then its FEAT member
    assert trains[:11] == [f"experiment={n}" for n in (*lake, *script.MAML, "tiny_fewshot_cpu_pretrain_conv4",
                                                          *script.TINY)]
    members = [ln for ln in lines if ln.startswith("metafsl train") and ln.endswith("_feat") and "/lake2015_" in ln]
    assert len(members) == 3 and all(" ".join(script.LAKE_MEMBER) in ln for ln in members)
    rows = len(script.LAKE_ABLATIONS) - 1  # no_augment is lake2015_background's own recipe: skipped
    assert len(trains) == 11 + rows + len(script.MAML_ABLATIONS)
    assert not any(ln.endswith("_no_augment") for ln in lines)
    assert sum("trainer.scheduler=null" in ln for ln in lines) == 2
    # each preset: its run, its member and their ensemble, each with and without eval.tta=5, and each of
    # those with and without eval.tta_rotations=4; each ablation row with and without eval.tta=5 only
    assert sum("protocol=lake20" in ln for ln in lines) == 4 * 9 + 2 * (rows + 1) - len(script.LAKE_NO_TTA)
    assert sum("eval.tta_rotations=4" in ln for ln in lines) == 2 * 9
    assert not any("eval.tta=5" in ln and "_tadam " in ln for ln in lines)
    assert sum("protocol.ensemble=[" in ln for ln in lines) == 3 * 4 + 2
    assert f"backbone.weights={tmp_path / 'tiny_pretrain'}" in " ".join(lines)
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_lake_seeds_train_the_pair_again_and_test_all_models_as_one_ensemble(capsys, tmp_path):
    """lake --seeds 3: each preset's ProtoNet + FEAT pair with seeds 0, 1 and 2 (six models, the
    issue's hour), then one ensemble of the six; --seeds 0 is refused up front."""
    script = _fidelity_script()
    assert script.main(["lake", "--seeds", "3", "--dry-run", "--out", str(tmp_path)]) == 0
    lines = [ln[2:] for ln in capsys.readouterr().out.splitlines() if ln.startswith("$ ")]
    trains = [ln for ln in lines if ln.startswith("metafsl train")]
    assert len(trains) == 3 * 6
    for name in script.LAKE:
        mine = [ln for ln in trains if f"experiment={name} " in ln]
        assert sorted(ln.count("seed=") for ln in mine) == [0, 0, 1, 1, 1, 1]
        assert sum(" ".join(script.LAKE_MEMBER) in ln for ln in mine) == 3
        six = [ln for ln in lines if f"run={tmp_path / name} " in ln and "protocol.ensemble=[" in ln
               and ln.split("protocol.ensemble=[")[1].count(",") == 4]
        assert len(six) == 4  # with and without eval.tta=5, each with and without rotation views
        assert all(f"{tmp_path / name}_feat_seed2" in ln for ln in six)
    with pytest.raises(SystemExit) as refused:
        script.main(["lake", "--seeds", "0", "--dry-run", "--out", str(tmp_path)])
    assert refused.value.code == 2 and "--seeds: 0 is not a number of seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # a goal that trains no seeds
        script.main(["ablate-lake", "--seeds", "3", "--dry-run", "--out", str(tmp_path)])
    assert refused.value.code == 2 and "--seeds: only the lake goal" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_maml_ablation_rows_train_the_minutes_asked_for_at_any_budget(capsys, tmp_path):
    """ablate-maml --minutes M --budget B: budget= also scales a clock-planned run's minutes, so every
    row, once the budget is applied, still trains M minutes planned by the clock."""
    from metafsl.api import apply_budget, compose, resolved

    script = _fidelity_script()
    assert script.main(["ablate-maml", "--dry-run", "--minutes", "14", "--budget", "0.25", "--out", str(tmp_path)]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("$ metafsl train")]
    assert len(rows) == len(script.MAML_ABLATIONS)
    for row in rows:
        args = [a for a in row.split()[2:] if a.split("=")[0] in
                ("experiment", "trainer.fit_to_budget", "trainer.max_minutes", "budget")]
        cfg = apply_budget(resolved(compose("train", args), check=False))
        assert cfg["trainer"]["fit_to_budget"] is True
        assert cfg["trainer"]["max_minutes"] == pytest.approx(14.0)


def test_ablation_rows_can_be_run_a_few_at_a_time(capsys, tmp_path):
    """--rows: only the named rows train, in the table's order; a name of no row is refused up front."""
    script = _fidelity_script()
    assert script.main(["ablate-maml", "--dry-run", "--rows", "no_da,no_cosine", "--out", str(tmp_path)]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("$ metafsl train")]
    assert [ln.rsplit("_", 2)[-2:] for ln in rows] == [["no", "da"], ["no", "cosine"]]
    assert script.main(["ablate-lake", "--dry-run", "--rows", "full,seed1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert sum(ln.startswith("$ metafsl train") for ln in out.splitlines()) == 2
    assert "protocol.ensemble=[" in out  # both of the ensemble's models are there
    for goal, row in [("ablate-maml", "no_cosin"), ("ablate-maml", "res56"), ("maml", "no_da")]:
        with pytest.raises(SystemExit) as refused:  # a typo, a row of the other ablation, no ablation
            script.main([goal, "--dry-run", "--rows", row, "--out", str(tmp_path)])
        assert refused.value.code == 2 and f"--rows: no row named {row}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_every_lake_ablation_row_composes_with_each_preset_and_only_no_ops_are_skipped():
    """Each row changes its background set's preset; the rows skipped as the preset's own recipe
    are exactly those that change nothing (no augmentation on the full set, Koch's on the others)."""
    script = _fidelity_script()  # its composed configs are cached: preset_has() reuses them
    assert list(script.LAKE_PRESET.values()) == script.LAKE
    for preset in script.LAKE:
        base = script._composed(preset)
        same = []
        for name, overrides in script.LAKE_ABLATIONS.items():
            cfg = script._composed(preset, tuple(overrides))
            assert cfg["name"] == preset and cfg["episode"]["within_alphabet"] == (name != "no_within_alphabet")
            if name != "full" and script.preset_has(preset, overrides):
                same.append(name)
                assert cfg == base
            else:  # a row that trains changes the recipe (only the full row is the preset itself)
                assert (cfg == base) == (name == "full"), name
        assert same == (["no_augment"] if preset == "lake2015_background" else ["koch"])
    assert {n: script.LAKE_ABLATIONS[n][0] for n in ("feat", "siamese", "tadam")} == \
        {"feat": "algo=feat", "siamese": "algo=siamese", "tadam": "algo=tadam"}


def test_lake_rows_are_compared_with_the_full_recipe_run_by_run():
    script = _fidelity_script()
    per_run = lambda *e: {f"run{i + 1:02d}": v for i, v in enumerate(e)}  # noqa: E731
    records = [{"run": "full", "test": "lake20, tta=1", "per_run_error": per_run(10.0, 20.0, 30.0)},
               {"run": "full", "test": "lake20, tta=5", "per_run_error": per_run(10.0, 10.0, 10.0)},
               {"run": "feat", "test": "lake20, tta=1", "per_run_error": per_run(5.0, 15.0, 25.0)},
               {"run": "feat", "test": "lake20, tta=5", "per_run_error": per_run(15.0, 10.0, 20.0)},
               {"run": "maml", "test": "episodes"}]
    script.against_full(records, "full")
    assert [rec.get("vs_full") for rec in records] == [None, None, "-5.00 ± 0.00", "+5.00 ± 5.66", None]
    assert "| vs_full |" in script.table(records) and "per_run_error" not in script.table(records)


def test_budget_scales_maml_plus_plus_schedules_with_the_iterations():
    from metafsl.api import apply_budget

    cfg = {"budget": 0.1, "trainer": {"iterations": 6000, "val_every": 500, "log_every": 50,
                                      "scheduler": {"T_max": 6000}},
           "algo": {"msl_iterations": 2000, "first_order_until": 2000}}
    out = apply_budget(cfg)
    assert (out["trainer"]["iterations"], out["trainer"]["scheduler"]["T_max"]) == (600, 600)
    assert (out["algo"]["msl_iterations"], out["algo"]["first_order_until"]) == (200, 200)
    assert apply_budget({**cfg, "algo": {"first_order_until": 0}})["algo"]["first_order_until"] == 0
