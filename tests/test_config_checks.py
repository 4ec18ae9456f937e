"""The option files are the single declaration of every option; checks refuse bad values early.

- every dataset / backbone / algo option names its ``_target_`` and exactly the target's
  arguments, with the target's own defaults;
- an unknown key in any group, a value of the wrong type and an out-of-range value end in one
  sentence (exit code 2) before any training starts.
"""
from __future__ import annotations

import copy
import functools
import inspect
from typing import List

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import data_fixtures as fx
from conftest import split_table
from metafsl import cli, options
from metafsl.conf import group_options
from metafsl.config import (
    INJECTED,
    RULES,
    check_run_config,
    hint_rule,
    run_keys,
    target_parameters,
)
from metafsl.errors import UserError

TARGET_GROUPS = ("dataset", "backbone", "algo")
OPTIONS = [(g, o) for g in TARGET_GROUPS for o in group_options(g)]
#: options that are another option's class with a different setting: what differs on purpose
VARIANTS = {"fomaml": {"first_order"}, "conv4_32": {"hidden"},
            **{arch: {"model"} for arch in ("resnet50", "vit_b_16", "convnext_tiny")}}


def _compose(overrides=()):
    return copy.deepcopy(_composed(tuple(overrides)))


@functools.cache
def _composed(overrides: tuple) -> dict:
    """The composed train config as a plain dict, once per worker (two tests walk every option)."""
    with initialize_config_module(config_module="metafsl.conf", version_base=None):
        return OmegaConf.to_container(compose(config_name="train", overrides=list(overrides)), resolve=True)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_file_declares_its_targets_arguments_with_their_defaults(group, option):
    node = options.shipped_option(group, option)
    params = target_parameters(node["_target_"])
    not_arguments = set(run_keys(group)) - (set(params) if group == "backbone" else set())
    declared = {k for k in node if not k.startswith("_") and k not in not_arguments}
    wanted = {k for k, p in params.items() if k not in INJECTED[group]
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    assert declared == wanted, f"{option}.yaml keys differ from {node['_target_']}'s arguments"
    for key in declared:
        default = params[key].default
        if default is inspect.Parameter.empty or key == "root":
            continue  # the option file supplies what the function cannot know (e.g. a location)
        if key in VARIANTS.get(node["name"], ()):
            continue
        assert node[key] == default or OmegaConf.is_interpolation(OmegaConf.create(node), key), (
            f"{option}.yaml {key}={node[key]!r} but {node['_target_']} defaults to {default!r}")


#: the tests that compose every option run on one pytest-xdist worker, which composes each once
COMPOSES_EVERY_OPTION = pytest.mark.xdist_group("compose_every_option")


@COMPOSES_EVERY_OPTION
@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_passes_the_checks(group, option):
    check_run_config(_compose([f"{group}={option}"]))


@COMPOSES_EVERY_OPTION
def test_every_rule_names_a_field_that_some_option_has():
    paths = set()
    configs = [_compose([f"{g}={o}"]) for g, o in OPTIONS]

    def walk(node, prefix=""):
        for key, value in node.items():
            paths.add(prefix + key)
            if isinstance(value, dict):
                walk(value, prefix + key + ".")

    for cfg in configs:
        walk(cfg)
    assert not [p for p in RULES if p not in paths], "a rule for a field no config has is dead"


def test_allowed_values_of_an_argument_are_stated_once_in_its_literal_hint():
    assert not [p for p, rule in RULES.items() if p.startswith("algo.") and rule.choices], \
        "an algo argument's allowed values belong in its constructor's Literal hint, not in RULES"
    with pytest.raises(UserError, match=r"^algo.distance must be one of sqeuclidean, cosine \(got 'l1'\)\.$"):
        options.build_option("algo", "protonet", {"distance": "l1"}, backbone=None)  # the library path


def test_a_literal_hint_is_a_rule_with_its_values():
    from typing import Literal, Optional

    rule = hint_rule(Optional[Literal["a", "b"]])
    assert (rule.kind, rule.choices, rule.optional) == ("str", ("a", "b"), True)
    assert rule.problem(None) is None and rule.problem("c") == "must be one of a, b (got 'c')"
    assert hint_rule(Literal[1, 3]).problem(True) == "must be one of 1, 3 (got True)"
    assert hint_rule(Optional[float]).problem("x") == "must be a number (got 'x')"
    assert hint_rule(List[int]) is None and hint_rule(Literal["a", 1]) is None


def _cli_error(capsys, *args):
    code = cli.main(["train", *args])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    text = (out + err).strip()
    assert "Traceback" not in text and len(text.splitlines()) <= 3, text
    return " ".join(text.split())


@pytest.mark.parametrize("override,key", [
    ("dataset.n_clases=3", "dataset.n_clases"), ("backbone.hiden=3", "backbone.hiden"),
    ("algo.distanse=cosine", "algo.distanse"), ("trainer.iteratons=3", "trainer.iteratons"),
    ("eval.episode=3", "eval.episode"), ("episode.train.n_wya=3", "episode.train.n_wya"),
    ("runtime.amp2=bf16", "runtime.amp2"), ("sed=3", "sed"), ("paths.dta_dir=x", "paths.dta_dir"),
])
def test_an_unknown_key_in_any_group_is_one_sentence_naming_the_valid_ones(capsys, override, key):
    msg = _cli_error(capsys, override)
    assert f"Unknown option '{key}'" in msg
    parent = key.rpartition(".")[0]
    valid = sorted(_compose()[parent] if parent and "." not in parent else
                   (_compose()["episode"]["train"] if parent else _compose()))
    assert ", ".join(k for k in valid if not k.startswith("_")) in msg


@pytest.mark.parametrize("override,sentence", [
    ("eval.episodes=0", "eval.episodes must be >= 1 (got 0)"),
    ("eval.split=bogus", "eval.split must be one of train, val, test (got 'bogus')"),
    ("trainer.meta_batch_size=0", "trainer.meta_batch_size must be >= 1"),
    ("trainer.val_every=0", "trainer.val_every must be >= 1"),
    ("trainer.log_every=0", "trainer.log_every must be >= 1"),
    ("trainer.optimizer.lr=-0.1", "trainer.optimizer.lr must be > 0 (got -0.1)"),
    ("trainer.iterations=-5", "trainer.iterations must be >= 0"),
    ("trainer.max_minutes=-1", "trainer.max_minutes must be >= 0"),
    ("trainer.val_episodes=-1", "trainer.val_episodes must be >= 0"),
    ("trainer.iterations=abc", "trainer.iterations must be an integer (got 'abc')"),
    ("backbone.hidden=0", "backbone.hidden must be >= 1"),
    ("backbone.layers=0", "backbone.layers must be >= 1"),
    ("dataset.image_size=2", "dataset.image_size must be >= 8"),
    # (a small glyphs set: the default one takes seconds to draw before the backbone is built)
    ("dataset.image_size=12 dataset.n_classes=60 dataset.examples_per_class=20",
     "This backbone cannot take 12x12 images"),
    ("algo=maml algo.inner_steps=0", "algo.inner_steps must be >= 1"),
    ("algo=maml algo.multi_step_loss=true algo.msl_iterations=0", "algo.msl_iterations must be >= 1 (got 0)"),
    ("algo=maml algo.backend=jax", "algo.backend must be one of l2l, vmap (got 'jax')"),
    # allowed values come from the constructor's Literal hints (stated nowhere else)
    ("algo.distance=manhattan", "algo.distance must be one of sqeuclidean, cosine (got 'manhattan')"),
    ("algo.distance=3", "algo.distance must be one of sqeuclidean, cosine (got 3)"),
    ("algo=reptile algo.inner_optimizer=rmsprop", "algo.inner_optimizer must be one of adam, sgd (got 'rmsprop')"),
    ("algo=metaoptnet algo.head=lasso", "algo.head must be one of svm, ridge (got 'lasso')"),
    ("algo=mann algo.gamma=abc", "algo.gamma must be a number (got 'abc')"),
    ("+algo.tau=1", "algo 'protonet' has no option 'tau'; its options are: distance, metric_scale, scale_init, temperature"),
    ("+trainer.optimizer.bogus=1", "trainer.optimizer 'torch.optim.Adam' has no option 'bogus'"),
    ("=5", "Cannot parse the override '=5': it needs a key"),
    ("dataset=folder dataset.channels=2", "dataset.channels must be one of 1, 3 (got 2)"),
    ("budget=0", "budget must be > 0"),
])
def test_out_of_range_or_wrong_type_is_one_sentence(capsys, tmp_path, override, sentence):
    run = tmp_path / "run"
    msg = _cli_error(capsys, *override.split(), f"hydra.run.dir={run}", f"dataset.root={tmp_path}"
                     if "folder" in override else "seed=0")
    assert sentence in msg
    assert not (run / "metrics.jsonl").exists()


#: dataset options that would leave a split without classes (or name no cache check), and the
#: sentence that says so
DATASET_OPTIONS = [
    ("dataset.n_classes=0", "dataset.n_classes must be >= 1 (got 0)."),
    ("dataset.examples_per_class=0", "dataset.examples_per_class must be >= 1 (got 0)."),
    ("dataset.n_classes=3", "dataset.n_classes=3 gives 2 train, 0 val and 1 test classes with "
     "dataset.train_fraction=0.64 and dataset.val_fraction=0.16, but each split needs at least one class; "
     "the fewest dataset.n_classes that works with these fractions is 5."),
    ("dataset.val_fraction=0.9", "dataset.train_fraction=0.64 and dataset.val_fraction=0.9 leave no test "
     "classes; they accept a train_fraction above 0, a val_fraction of 0 or more, and a sum below 1 (the rest "
     "of the classes is test)."),
    ("dataset.train_fraction=0", "dataset.train_fraction=0 and dataset.val_fraction=0.16 leave no training "
     "classes;"),
    ("dataset.val_fraction=1.5", "dataset.val_fraction must be <= 1 (got 1.5)."),
    ("dataset=folder dataset.train_fraction=0.8 dataset.val_fraction=0.2", "dataset.train_fraction=0.8 and "
     "dataset.val_fraction=0.2 leave no test classes;"),
    ("dataset=omniglot dataset.split=lake dataset.lake_val_fraction=1", "dataset.lake_val_fraction must be at "
     "least 0 and below 1 (got 1): it is the fraction of the background characters held out for validation."),
    ("dataset=mini_imagenet dataset.cache_check=md5", "dataset.cache_check must be one of stat, hash (got 'md5')."),
]


@pytest.mark.parametrize("override,sentence", DATASET_OPTIONS)
def test_dataset_options_that_empty_a_split_are_refused_before_any_work(capsys, tmp_path, override, sentence):
    """Checked with the composed config (the loader's check_arguments), so the run dir is left
    unused: not even its .hydra/ snapshot is written."""
    run = tmp_path / "run"
    root = [f"dataset.root={fx.class_folders(tmp_path / 'imgs', 6, 2)}"] if "folder" in override else []
    msg = _cli_error(capsys, *override.split(), f"hydra.run.dir={run}", *root)
    assert sentence in msg
    assert not (run / ".hydra").exists()


def test_checks_are_plain_functions_too():
    cfg = _compose()
    cfg["trainer"]["meta_batch_size"] = 0
    with pytest.raises(UserError, match="meta_batch_size"):
        check_run_config(cfg)


def test_a_val_fraction_of_0_means_no_val_split(run_cli):
    code, out, err = run_cli("data", "dataset=glyphs", "dataset.n_classes=20", "dataset.val_fraction=0")
    assert code == 0, err
    assert sorted(split_table(out)) == ["test", "train"]
    assert split_table(out)["train"]["classes"] + split_table(out)["test"]["classes"] == 20


def test_the_glyphs_loader_checks_its_split_too(tmp_path):
    from metafsl.data import glyphs

    with pytest.raises(UserError, match=r"^dataset.n_classes=3 gives 2 train, 0 val and 1 test classes"):
        glyphs.load(n_classes=3, cache_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"^dataset.examples_per_class must be at least 1 \(got 0\)"):
        glyphs.generate(n_classes=10, examples_per_class=0)
