"""End to end: metric and transfer methods, method options, `metafsl list algo`, errors."""
from __future__ import annotations

import json
from typing import Literal

import pytest
import torch

from metafsl.conf import CONF_DIR, group_options
from metafsl.config import target_object
from metafsl.options import shipped_option
from test_algorithms_cli import FAST, ZOO, train


def _run(run_cli, tmp_path, name, *overrides):
    """A 4-iteration run, the train loss logged at every iteration; (losses, final weights)."""
    summary = train(run_cli, tmp_path / name, "trainer.log_every=1", *overrides)
    assert summary["test"]["episodes"] == 4
    records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    weights = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["model"]
    return [r["loss"] for r in records if r["split"] == "train"], weights


#: option -> (the reference run's overrides, the option's extra overrides, weights it must add)
OPTIONS = {
    "metaoptnet_ridge": (["algo=metaoptnet", *FAST["metaoptnet"]], ["algo.head=ridge"], []),
    "matchingnet_fce": (["algo=matchingnet"], ["algo.fce=true", "algo.fce_steps=2"], ["g", "f"]),
    "maml_multi_step_loss": (["algo=maml", "algo.inner_steps=2", "algo.test_inner_steps=2"],
                             ["algo.multi_step_loss=true", "algo.msl_iterations=100"], ["msl_iteration"]),
    "maml_per_step_lr": (["algo=maml", "algo.inner_steps=2", "algo.test_inner_steps=2"],
                         ["algo.per_step_lr=true"], ["step_lrs"]),
    "reptile_not_transductive": (["algo=reptile", "trainer=reptile", *FAST["reptile"]],
                                 ["algo.transductive=false"], []),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_method_options_change_the_run(run_cli, tmp_path, option):
    """Each option changes what is computed (the same seed, the same first episode, a different
    training loss or test accuracy) and adds the weights it is made of."""
    base, extra, added = OPTIONS[option]
    ref_loss, ref_w = _run(run_cli, tmp_path, "ref", *base)
    opt_loss, opt_w = _run(run_cli, tmp_path, "opt", *base, *extra)
    ref_test = json.loads((tmp_path / "ref" / "summary.json").read_text())["test"]["acc"]
    opt_test = json.loads((tmp_path / "opt" / "summary.json").read_text())["test"]["acc"]
    if option == "reptile_not_transductive":  # only the test-time adaptation differs
        assert ref_loss == opt_loss and ref_test != opt_test
    elif option == "maml_per_step_lr":  # the rates start at inner_lr: the same first step
        assert ref_loss[0] == opt_loss[0] and ref_loss[1:] != opt_loss[1:]
    else:
        assert ref_loss[0] != opt_loss[0]
    for name in added:
        assert any(k.split(".")[0] == name for k in opt_w) and not any(k.split(".")[0] == name for k in ref_w)
    if option == "maml_per_step_lr":  # the per-step rates are learned: they moved from inner_lr
        assert not torch.allclose(opt_w["step_lrs"], torch.full_like(opt_w["step_lrs"], 0.4))
    if option == "maml_multi_step_loss":  # the annealing counter advanced once per iteration
        assert int(opt_w["msl_iteration"]) == 4


def test_conv4_layers_option_shapes_the_backbone(run_cli, tmp_path):
    summary = train(run_cli, tmp_path, "algo=protonet", "backbone=conv4_32", "backbone.layers=2")
    assert summary["backbone"] == "conv4_32"
    w = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    convs = [k for k in w if k.endswith("conv.weight")]
    assert len(convs) == 2  # backbone.layers=2 (the width is train()'s backbone.hidden=8)


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


# ----------------------------------------------------------------------------- argument docs
ALGOS = group_options("algo")


def _algo_class(option):
    return target_object(shipped_option("algo", option)["_target_"])


def test_list_algo_name_shows_each_argument_with_its_value_and_meaning(run_cli):
    code, out, _ = run_cli("list", "algo", "maml")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("algo=maml: MAML (Finn, Abbeel & Levine, ICML 2017)")
    assert "metafsl.algorithms.maml.MAML" in out
    values = {"inner_lr": "0.4", "test_inner_lr": "null", "first_order": "false", "backend": "l2l",
              "msl_iterations": "7500"}
    for key, value in values.items():  # the YAML's value beside the docstring's description
        row = next(ln for ln in lines if f" {key} " in ln)
        assert row.split("│")[2].strip() == value, row
    assert "learn2learn's per-task clone/adapt loop" in out  # MAML's own docstring
    assert "step size of the inner loop" in out  # inherited from GradientLearner's docstring
    assert "Example:\n  metafsl train algo=maml algo.backend=vmap" in out
    from metafsl.commands.listing import (
        argument_row,  # a Literal's values, where the text lacks them
    )

    assert argument_row("backend", "l2l", "how tasks are batched.", Literal["l2l", "vmap"]) == \
        ["backend", "l2l", "how tasks are batched. One of: l2l, vmap."]
    assert argument_row("fce", False, "full context embeddings.", bool)[1:] == ["false", "full context embeddings."]
    code, _, err = run_cli("list", "algo", "nope")
    assert code == 2 and "Unknown algo 'nope'; choose one of: anil" in err
    code, _, err = run_cli("list", "dataset", "omniglot")
    assert code == 2 and "metafsl list algo <name>" in err


@pytest.mark.parametrize("option", ALGOS)
def test_every_argument_is_described_once_in_a_class_docstring(option):
    """Each YAML argument has a description in the Arguments section of its class or a base;
    a class describes only its own constructor's arguments; the YAML holds values only."""
    import inspect

    from metafsl.commands.listing import argument_descriptions, docstring_section

    cls = _algo_class(option)
    described = argument_descriptions(cls)
    node = shipped_option("algo", option)
    missing = [k for k in node if not k.startswith("_") and k != "name" and not described.get(k)]
    assert not missing, f"{cls.__name__}'s docstring does not describe {missing}"
    for klass in cls.__mro__:
        own = {line.split(":")[0] for line in docstring_section(klass, "Arguments") if not line.startswith(" ")}
        assert own <= set(inspect.signature(klass.__init__).parameters), (klass, own)
    text = (CONF_DIR / "algo" / f"{option}.yaml").read_text()
    body = text[text.index("_target_:"):]
    assert "#" not in body, f"{option}.yaml: argument explanations belong in {cls.__name__}'s docstring"


@pytest.mark.parametrize("option", ALGOS)
def test_each_docstring_example_is_a_valid_command(option):
    from metafsl import api
    from metafsl.commands.listing import docstring_example

    example = docstring_example(_algo_class(option))
    words = example[0].split()
    assert words[:2] == ["metafsl", "train"], example
    api.resolved(api.compose("train", words[2:]))  # composes and passes every check
