"""Every config file composes; typos fail at composition, wrong types and ranges before any work."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from metafsl.api import register_resolvers
from metafsl.conf import CONF_DIR, GROUPS, group_options

register_resolvers()
PRIMARY = ["train", "test", "sweep", "data"]
OPTIONS = [(g, o) for g in GROUPS for o in group_options(g)]


def _compose(name="train", overrides=(), hydra=False):
    with initialize_config_module(config_module="metafsl.conf", version_base=None):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_configs_compose(name):
    cfg = _compose(name, ["run=/tmp/x"] if name == "test" else [], hydra=True)
    assert cfg.hydra.job.name == name
    assert cfg.algo.name and cfg.dataset.name and cfg.episode.test.n_way > 0


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option):
    if group == "protocol":  # test protocols exist only for `metafsl test`
        cfg = _compose("test", [f"{group}={option}", "run=/tmp/x"])
    elif group == "hparams_search":  # searches configure the sweep app's Optuna sweeper
        cfg = _compose("sweep", [f"{group}={option}"], hydra=True)
        assert cfg.hydra.sweeper.direction == "maximize" and cfg.hydra.sweeper.params
        return
    else:
        cfg = _compose("train", [f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if group == "logger":  # several loggers at once: each option sits under its own name
        assert set(resolved["logger"]) == {option} and resolved["logger"][option]["_target_"]
    elif group != "experiment":
        # option files are named after their `name` field (used to re-compose saved runs)
        assert resolved[group]["name"] == option
    else:
        head = (CONF_DIR / "experiment" / f"{option}.yaml").read_text().splitlines()
        assert head[0] == "# @package _global_"
        assert any(line.startswith("# metafsl ") for line in head[:4]), "header must give the command"


def test_typos_fail_at_composition():
    with pytest.raises(ConfigCompositionException):
        _compose("train", ["trainer.iteratons=3"])
    with pytest.raises(ConfigCompositionException):
        _compose("train", ["algo=maml", "algo.inner_lrr=0.1"])


def test_episode_presets_match_their_names():
    for option in group_options("episode"):
        ep = _compose("train", [f"episode={option}"]).episode
        way, shot = option.rstrip("s").split("w")
        assert (ep.train.n_way, ep.train.n_shot, ep.test.n_way, ep.test.n_shot) == (int(way), int(shot)) * 2
