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
    "fomaml": ("metafsl.algorithms.maml:MAML",
               "First-order MAML (Finn et al. 2017): MAML without second derivatives"),
    "metasgd": ("metafsl.algorithms.metasgd:MetaSGD",
                "Meta-SGD (Li et al. 2017): MAML with learned per-parameter inner learning rates"),
    "anil": ("metafsl.algorithms.anil:ANIL",
             "ANIL (Raghu et al. 2020): MAML where only the head adapts in the inner loop"),
    "reptile": ("metafsl.algorithms.reptile:Reptile",
                "Reptile (Nichol et al. 2018): move the initialisation towards task-adapted weights"),
    "matchingnet": ("metafsl.algorithms.matchingnet:MatchingNet",
                    "Matching Networks (Vinyals et al. 2016): cosine attention over the support set"),
    "relationnet": ("metafsl.algorithms.relationnet:RelationNet",
                    "Relation Network (Sung et al. 2018): learned relation scores, MSE to one-hot"),
    "siamese": ("metafsl.algorithms.siamese:Siamese",
                "Siamese network (Koch et al. 2015): same/different pairs, most similar support example"),
    "metaoptnet": ("metafsl.algorithms.metaoptnet:MetaOptNet",
                   "MetaOptNet (Lee et al. 2019): differentiable SVM or ridge-regression head"),
    "mann": ("metafsl.algorithms.mann:MANN",
             "MANN (Santoro et al. 2016): LSTM controller with an LRU-access external memory"),
    "metalstm": ("metafsl.algorithms.metalstm:MetaLSTM",
                 "Meta-learner LSTM (Ravi & Larochelle 2017): an LSTM produces the learner's updates"),
    "baseline": ("metafsl.algorithms.baseline:Baseline",
                 "Baseline (Chen et al. 2019): pre-trained classifier, new linear head per task"),
    "baselinepp": ("metafsl.algorithms.baseline:BaselinePP",
                   "Baseline++ (Chen et al. 2019): cosine classifier, new cosine head per task"),
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
