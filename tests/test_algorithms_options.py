"""End to end: metric and transfer methods, method options, `metafsl list algo`, errors."""
from __future__ import annotations

import pytest

from test_algorithms_cli import FAST, METRIC_AND_TRANSFER, ZOO, train


@pytest.mark.parametrize("name", METRIC_AND_TRANSFER)
def test_metric_or_transfer_method_trains_and_tests_on_glyphs(run_cli, tmp_path, name):
    summary = train(run_cli, tmp_path, f"algo={name}", *FAST.get(name, []))
    assert summary["algo"] == name
    assert 0 <= summary["test"]["acc"] <= 100 and summary["test"]["episodes"] == 4


@pytest.mark.parametrize("overrides", [
    ["algo=metaoptnet", "algo.head=ridge"],
    ["algo=reptile", "algo.transductive=false", "trainer=reptile", *FAST["reptile"]],
    ["algo=matchingnet", "algo.fce=true", "algo.fce_steps=2"],
    ["algo=protonet", "backbone=conv4_32", "backbone.layers=2"],
    # MAML++ options (Antoniou et al. 2019): learned per-step rates, multi-step loss
    ["algo=maml", "algo.per_step_lr=true", "algo.multi_step_loss=true", "algo.inner_steps=2",
     "algo.test_inner_steps=2", "algo.msl_iterations=2"],
])
def test_method_options(run_cli, tmp_path, overrides):
    summary = train(run_cli, tmp_path, *overrides)
    assert summary["test"]["episodes"] == 4


def test_baseline_checkpoint_reloads_in_test_command(run_cli, tmp_path):
    train(run_cli, tmp_path, "algo=baselinepp", *FAST["baselinepp"])
    code, out, err = run_cli("test", f"run={tmp_path}", "eval.episodes=4",
                             f"hydra.run.dir={tmp_path / 'test'}")
    assert code == 0, err + out


def test_fomaml_is_first_order_maml(run_cli, tmp_path):
    code, out, _ = run_cli("train", "algo=fomaml", "--cfg", "job")
    assert code == 0 and "first_order: true" in out and "name: fomaml" in out


def test_bad_options_are_one_sentence_errors(run_cli, tmp_path):
    from conftest import TINY

    code, out, err = run_cli("train", *TINY, "algo=metaoptnet", "algo.head=lasso", f"hydra.run.dir={tmp_path}")
    assert code == 2 and "algo.head must be one of svm, ridge (got 'lasso')" in err + out
    code, out, err = run_cli("train", *TINY, "algo=mann", "episode.test.n_way=8", f"hydra.run.dir={tmp_path}/b")
    assert code == 2 and "has 5 label slots: it classifies up to 5 classes, got 8" in err + out
    code, out, err = run_cli("train", *TINY, "algo=maml", "algo.backend=vmap", "algo.per_step_lr=true",
                             f"hydra.run.dir={tmp_path}/c")
    assert code == 2 and "need algo.backend=l2l" in err + out


def test_list_algo_describes_every_method(run_cli):
    code, out, _ = run_cli("list", "algo")
    assert code == 0
    for name in ZOO + ["maml", "protonet"]:
        line = next((ln for ln in out.splitlines() if f" {name} " in ln), "")
        assert line and len(line.split(name, 1)[1].strip(" │|")) > 20, (name, line)
