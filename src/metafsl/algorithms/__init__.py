"""Few-shot learners behind one interface (``metafsl.algorithms.base.Algorithm``).

The registry maps ``algo=<name>`` to the class (imported lazily) and a one-line
description, which ``metafsl list algo`` prints without importing torch.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, Tuple

from metafsl.errors import UserError

#: name -> ("module:Class", one-line description)
ALGORITHMS: Dict[str, Tuple[str, str]] = {
    "maml": ("metafsl.algorithms.maml:MAML",
             "MAML (Finn et al. 2017): second-order inner-loop adaptation; first_order=true for FOMAML"),
    "protonet": ("metafsl.algorithms.protonet:ProtoNet",
                 "Prototypical Networks (Snell et al. 2017): nearest class mean, squared Euclidean"),
}

#: config keys that select behaviour outside the constructor
_NOT_CONSTRUCTOR_ARGS = {"name"}


def algorithm_class(name: str):
    if name not in ALGORITHMS:
        raise UserError(f"Unknown algorithm '{name}'; choose one of: {', '.join(sorted(ALGORITHMS))}.")
    module, _, cls = ALGORITHMS[name][0].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_algorithm(algo_cfg: Dict[str, Any], backbone, n_way: int):
    """Instantiate ``algo_cfg['name']`` with the config's fields as constructor arguments."""
    cls = algorithm_class(algo_cfg["name"])
    kwargs = {k: v for k, v in algo_cfg.items() if k not in _NOT_CONSTRUCTOR_ARGS}
    params = inspect.signature(cls.__init__).parameters
    if "n_way" in params:
        kwargs["n_way"] = n_way
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise UserError(f"Algorithm '{algo_cfg['name']}' does not take option(s): {', '.join(unknown)}.")
    return cls(backbone=backbone, **kwargs)
