"""Build a config group's option (dataset loader, backbone, learner) from its ``_target_``.

An option node is the composed ``cfg.<group>``: ``_target_``, ``name`` and every argument of
the target.  ``instantiate`` checks the arguments against the target's signature (one
sentence for a key it does not take or a value of the wrong type), drops the keys that are
not arguments (``name``; a dataset's preprocessing keys) and calls ``hydra.utils.instantiate``
with what the run supplies (``backbone=``, ``n_way=``, ``channels=`` ...).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

from metafsl.conf import CONF_DIR
from metafsl.config import check_target_arguments, run_keys, target_parameters


def shipped_option(group: str, name: str) -> Dict[str, Any]:
    """``conf/<group>/<name>.yaml`` as a plain dict."""
    from omegaconf import OmegaConf

    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        from metafsl.errors import UserError

        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise UserError(f"Unknown {group} '{name}'; choose one of: {', '.join(known)}.")
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    node.pop("defaults", None)
    return node


def with_target(group: str, node: Mapping[str, Any]) -> Dict[str, Any]:
    """Run dirs written before options named their ``_target_`` get the shipped option's."""
    node = dict(node)
    if "_target_" not in node:
        node["_target_"] = shipped_option(group, node["name"])["_target_"]
    return node


def arguments(group: str, node: Mapping[str, Any]) -> Dict[str, Any]:
    """The node without the keys that are not arguments of its target (a backbone's ``name``
    and ``weights`` reach a factory that takes them: torchvision/timm)."""
    taken = set(target_parameters(node["_target_"])) if group == "backbone" else set()
    dropped = set(run_keys(group)) - taken
    return {k: v for k, v in node.items() if k not in dropped}


def instantiate(group: str, node: Mapping[str, Any], **supplied: Any) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    node = with_target(group, node)
    check_target_arguments(group, node)
    try:
        return hydra_instantiate(arguments(group, node), **supplied, _convert_="all")
    except InstantiationException as exc:  # Hydra wraps what the target raised: pass it on as is
        if exc.__cause__ is not None:
            raise exc.__cause__ from None
        raise


def build_option(group: str, name: str, overrides: Mapping[str, Any], **supplied: Any) -> Any:
    """The shipped option ``<group>=<name>`` with ``overrides`` applied (library convenience)."""
    node = {**shipped_option(group, name), **overrides}
    return instantiate(group, node, **supplied)
