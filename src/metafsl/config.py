"""Checks of a composed run config, made before any work starts.

The YAML files in ``conf/`` are the single declaration of every option: each option file names
its class or loader (``_target_``) and every argument with its default, and Hydra refuses a
key that is not there.  What a YAML cannot say is held here:

- ``RULES``: the type and allowed range (or values) of run-level fields (``trainer.*``,
  ``eval.*``, ``episode.*``, ``runtime.*``, top-level keys) and the ranges of option arguments
  shared by several classes (``algo.inner_lr > 0``, ``backbone.hidden``, ``dataset.image_size``
  ...), which a type hint cannot state;
- the arguments of a ``_target_`` are checked against its signature (a key added with
  ``+algo.x=1`` that the class does not take, a value of the wrong type); the allowed values of
  an argument are its ``typing.Literal[...]`` hint (``distance: Literal["sqeuclidean",
  "cosine"]``), stated there only;
- a dataset loader's arguments taken together (fractions that leave a split without classes)
  by the ``check_arguments`` function its module may define.

Every problem is one sentence (``UserError``).  This module imports no torch; the signature
checks import the target's module, which happens anyway when the run builds it.
"""
from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from metafsl.errors import UserError


@dataclass(frozen=True)
class Rule:
    """A field's type (int | float | bool | str), bounds and choices; ``optional``: null allowed."""

    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Tuple[Any, ...] = ()
    optional: bool = False
    strict_low: bool = False  # low itself is excluded (a learning rate must be > 0)

    def problem(self, value: Any) -> Optional[str]:
        if value is None:
            return None if self.optional else "must be set (it is null)"
        if self.choices and not (_is_kind(value, self.kind) and value in self.choices):
            return f"must be one of {', '.join(map(str, self.choices))} (got {value!r})"
        if not _is_kind(value, self.kind):
            return f"must be {_KIND_WORDS[self.kind]} (got {value!r})"
        if self.low is not None and (value < self.low or (self.strict_low and value == self.low)):
            return f"must be {'>' if self.strict_low else '>='} {_num(self.low)} (got {value!r})"
        if self.high is not None and value > self.high:
            return f"must be <= {_num(self.high)} (got {value!r})"
        return None


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float))
    return isinstance(value, str)


def _int(low=None, high=None, optional=False) -> Rule:
    return Rule("int", low, high, optional=optional)


def _pos(kind="float", optional=False) -> Rule:
    return Rule(kind, 0, strict_low=True, optional=optional)


def _choice(*choices: str) -> Rule:
    return Rule("str", choices=choices)


_FRACTION = Rule("float", 0, 1)

#: dotted path -> rule; a path that the composed config does not have is skipped
#: ``eval.finetune_views``: flips and shifts (P>M>F), or the dataset's training augmentation
FINETUNE_VIEWS = ("flip_shift", "train")
#: eval.tta_rotations choices (metafsl.data.augment.ROTATION_VIEWS; a test keeps them equal)
ROTATION_VIEWS = (1, 2, 4)

RULES: Dict[str, Rule] = {
    "seed": _int(0),
    "device": Rule("str"),
    "resume": Rule("bool"), "test": Rule("bool"), "verbose": Rule("bool"),
    "checkpoint": _choice("best", "last"),
    "budget": Rule("float", 0, 1, strict_low=True),
    "trainer.iterations": _int(0),
    "trainer.meta_batch_size": _int(1),
    "trainer.val_every": _int(1),
    "trainer.val_episodes": _int(0),
    "trainer.log_every": _int(1),
    "trainer.grad_clip": _pos(optional=True),
    "trainer.max_minutes": Rule("float", 0, optional=True),
    "trainer.checkpoint_every_minutes": _pos(optional=True),
    "trainer.fit_to_budget": Rule("bool"),
    "trainer.optimizer.lr": _pos(),
    "eval.episodes": _int(1),
    "eval.seed": _int(0),
    "eval.batch_episodes": _int(1),
    "eval.split": _choice("train", "val", "test"),
    "eval.transductive": _choice("none", "tim", "bdcspn", "ptmap", "laplacianshot"),
    "eval.tim.iterations": _int(0),
    "eval.tim.distance": _choice("sqeuclidean", "cosine"),
    **{f"eval.{key}": _pos() for key in ("tim.lr", "tim.temperature", "bdcspn.temperature", "ptmap.power",
                                         "ptmap.lam", "laplacianshot.rectify_temperature")},
    **{f"eval.{key}": Rule("float", 0) for key in ("tim.ce_weight", "tim.marginal_weight",
                                                   "tim.conditional_weight", "laplacianshot.lam")},
    "eval.ptmap.alpha": Rule("float", 0, 1),
    **{f"eval.{key}": _int(1) for key in ("ptmap.steps", "laplacianshot.steps", "laplacianshot.knn")},
    **{f"eval.{key}": Rule("bool") for key in ("tim.normalize", "bdcspn.shift_queries", "ptmap.normalize",
                                               "laplacianshot.normalize")},
    "eval.bn": _choice("auto", "inductive", "transductive"),
    "eval.finetune_steps": _int(0),
    "eval.finetune_lr": _pos(),
    "eval.finetune_views": _choice(*FINETUNE_VIEWS),
    "eval.tta": Rule("int", 1, 10),
    "eval.tta_rotations": Rule("int", choices=ROTATION_VIEWS),
    **{f"episode.{phase}.{key}": _int(low) for phase in ("train", "test")
       for key, low in (("n_way", 2), ("n_shot", 1), ("n_query", 1))},
    "episode.within_alphabet": Rule("bool"),
    "runtime.amp": _choice("off", "bf16"),
    "distributed.nproc_per_node": _int(1),
    "distributed.nnodes": _int(1),
    "distributed.node_rank": _int(0),
    "distributed.rdzv_endpoint": Rule("str", optional=True),
    "distributed.join_timeout": _pos(),
    "distributed.max_restarts": _int(0),
    "distributed.backend": _choice("auto", "gloo", "nccl"),
    "dataset.image_size": _int(8),
    "dataset.channels": Rule("int", choices=(1, 3)),
    "dataset.normalize": _choice("none", "dataset"),
    "dataset.augment": _choice("none", "metaoptnet", "koch", "stroke", "koch_stroke"),
    "dataset.train_fraction": _FRACTION,
    "dataset.val_fraction": _FRACTION,
    "dataset.split": _choice("vinyals", "lake"),
    "dataset.background": _choice("images_background", "images_background_small1",
                                  "images_background_small2"),
    "dataset.format": _choice("auto", "csv", "pickle"),
    "dataset.cache_check": _choice("stat", "hash"),
    "dataset.n_classes": _int(1),
    "dataset.examples_per_class": _int(1),
    "dataset.lake_val_fraction": _FRACTION,
    "dataset.seed": _int(0),
    "backbone.hidden": _int(1),
    "backbone.layers": _int(1),
    "backbone.depth": _int(10),
    "backbone.widen": _int(1),
    "backbone.dropout": Rule("float", 0, 1),
    "backbone.dropblock": Rule("float", 0, 1),
    "backbone.weights": Rule("str"),
    "backbone.freeze": Rule("bool"),
    "backbone.lr": _pos(optional=True),
    "backbone.input_size": _int(8, optional=True),
    **{f"algo.{key}": _pos() for key in ("inner_lr", "lr_init_max", "finetune_lr", "svm_c",
                                         "ridge_lambda", "temperature")},
    "algo.scale": _pos(optional=True),
    "algo.test_inner_lr": _pos(optional=True),
    "algo.lr_init_min": Rule("float", 0),
    **{f"algo.{key}": _int(1) for key in ("inner_steps", "test_inner_steps", "inner_batch",
                                          "test_inner_batch", "svm_steps", "test_svm_steps",
                                          "batch_size", "finetune_batch", "finetune_epochs",
                                          "steps", "fce_steps", "controller_size", "memory_slots",
                                          "memory_size", "read_heads", "width", "msl_iterations")},
    "algo.test_steps": _int(1, optional=True),
    "algo.hidden": _int(1),
    "algo.gamma": _FRACTION,
    "algo.momentum": _FRACTION,
    "algo.label_smoothing": Rule("float", 0, 1),
}

#: dataset keys that are not loader arguments (preprocessing and run-level choices)
DATASET_RUN_KEYS = ("name", "normalize", "augment", "trainval")
#: backbone keys applied around its factory (``engine.components``), passed to it only if it takes them
BACKBONE_RUN_KEYS = ("name", "weights", "freeze", "lr")
#: keys injected when a group's _target_ is built (not set in the YAML)
INJECTED = {"algo": ("backbone", "n_way", "n_shot"), "backbone": ("channels", "image_size"),
            "dataset": ("cache_dir",)}


def lookup(cfg: Dict[str, Any], path: str) -> Tuple[bool, Any]:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def run_config_problems(cfg: Dict[str, Any],
                        groups: Iterable[str] = ("dataset", "backbone", "algo")) -> List[str]:
    """Every field out of range or of the wrong type, and the first ``_target_`` argument its
    class does not take in each group: one sentence each (``metafsl validate`` lists them all)."""
    problems = []
    for path, rule in RULES.items():
        found, value = lookup(cfg, path)
        problem = rule.problem(value) if found else None
        if problem:
            problems.append(f"{path} {problem}.")
    targets = [(g, cfg[g], ()) for g in groups if isinstance(cfg.get(g), dict) and cfg[g].get("_target_")]
    optimizer = (cfg.get("trainer") or {}).get("optimizer")
    if isinstance(optimizer, dict) and optimizer.get("_target_"):
        targets.append(("trainer.optimizer", optimizer, ("params",)))
    problems += _budget_fit_problems(cfg.get("trainer"))
    problems += _finetune_views_problems(cfg)
    for group, node, skip in targets:
        try:
            check_target_arguments(group, node, skip=skip)
            if group == "dataset":
                check_loader_arguments(node)
        except UserError as exc:
            problems.append(str(exc))
    return problems


#: eval.finetune_views=train without an augmentation (also raised by ``data.sampler.Preprocess.check_views``)
FINETUNE_VIEWS_NEED_AUGMENT = ("eval.finetune_views=train draws views with the dataset's training augmentation, but "
                               "dataset.augment is none; set dataset.augment or eval.finetune_views=flip_shift.")


def _finetune_views_problems(cfg: Dict[str, Any]) -> List[str]:
    """``eval.finetune_views=train`` draws its views with ``dataset.augment``, so it needs one
    (checked before a training whose final test would fine-tune, not after it)."""
    ev, ds = cfg.get("eval") or {}, cfg.get("dataset") or {}
    if ev.get("finetune_steps") and ev.get("finetune_views") == "train" and ds.get("augment", "none") in (None, "none"):
        return [FINETUNE_VIEWS_NEED_AUGMENT]
    return []


#: the schedules ``trainer.fit_to_budget`` re-plans (``metafsl.engine.budget_plan``)
BUDGET_FIT_SCHEDULES = ("CosineAnnealingLR", "StepLR", "MultiStepLR", "LambdaLR")


def _budget_fit_problems(trainer: Any) -> List[str]:
    """``trainer.fit_to_budget=true`` needs a budget and a schedule it knows how to re-plan."""
    if not isinstance(trainer, dict) or trainer.get("fit_to_budget") is not True:
        return []
    if not trainer.get("max_minutes"):
        return ["trainer.fit_to_budget=true plans the run to end inside trainer.max_minutes, which is "
                "not set; set trainer.max_minutes=<minutes> or trainer.fit_to_budget=false."]
    sched = trainer.get("scheduler")
    name = str(sched.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(sched, dict) else ""
    lam = sched.get("lr_lambda") if isinstance(sched, dict) else None
    piecewise = isinstance(lam, dict) and str(lam.get("_target_", "")).endswith("PiecewiseConstant")
    if sched and (name not in BUDGET_FIT_SCHEDULES or (name == "LambdaLR" and not piecewise)):
        return [f"trainer.fit_to_budget=true re-plans CosineAnnealingLR, StepLR, MultiStepLR and "
                f"PiecewiseConstant schedules, not {name or sched}; set trainer.fit_to_budget=false."]
    return []


def check_run_config(cfg: Dict[str, Any], groups: Iterable[str] = ("dataset", "backbone", "algo")) -> None:
    """Raise one ``UserError`` sentence for the first field out of range or of the wrong type,
    or a ``_target_`` argument its class does not take."""
    problems = run_config_problems(cfg, groups)
    if problems:
        raise UserError(problems[0])


def target_object(target: str) -> Any:
    """The class or function a ``_target_`` names, or one sentence if it cannot be imported."""
    import importlib

    module, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise UserError(f"_target_ '{target}' cannot be imported; is the option file right?") from None


def _target_callable(target: str):
    """The function a ``_target_`` names (a class's ``__init__``)."""
    obj = target_object(target)
    return obj.__init__ if inspect.isclass(obj) else obj


def target_parameters(target: str) -> Dict[str, inspect.Parameter]:
    """The keyword parameters of ``module.attr`` (a class's ``__init__`` or a function)."""
    params = dict(inspect.signature(_target_callable(target)).parameters)
    params.pop("self", None)
    return params


def check_target_arguments(group: str, node: Dict[str, Any], skip: Tuple[str, ...] = ()) -> None:
    params = target_parameters(node["_target_"])
    hints = target_hints(node["_target_"])
    reserved = set(INJECTED.get(group, ())) | set(skip)
    ignored = set(run_keys(group)) - (set(params) if group == "backbone" else set())
    for key, value in node.items():
        if key.startswith("_") or key in ignored:
            continue
        if key not in params or key in reserved:
            valid = sorted(k for k, p in params.items() if k not in reserved
                           and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
            raise UserError(f"{group} '{node.get('name', node['_target_'])}' has no option '{key}'; "
                            f"its options are: {', '.join(valid)}.")
        rule = hint_rule(hints.get(key))
        problem = rule.problem(value) if rule else None
        if problem:
            raise UserError(f"{group}.{key} {problem}.")


def run_keys(group: str) -> tuple:
    """Keys of a group's option that are not (necessarily) arguments of its ``_target_``."""
    return {"dataset": DATASET_RUN_KEYS, "backbone": BACKBONE_RUN_KEYS}.get(group, ("name",))


def check_loader_arguments(node: Dict[str, Any]) -> None:
    """A dataset loader's own check of its arguments taken together (``check_arguments`` in the
    module of its ``_target_``), before any file is read: e.g. glyphs' ``n_classes`` and split
    fractions that leave a split without classes."""
    import importlib

    module = importlib.import_module(node["_target_"].rpartition(".")[0])
    check = getattr(module, "check_arguments", None)
    if check is not None:
        check(**{k: v for k, v in node.items() if not k.startswith("_") and k not in DATASET_RUN_KEYS})


def target_hints(target: str) -> Dict[str, Any]:
    """The type hints of a ``_target_``'s arguments."""
    try:
        return typing.get_type_hints(_target_callable(target))
    except Exception:  # annotations naming types that cannot be resolved: no type check
        return {}


_KIND_OF_TYPE = {bool: "bool", int: "int", float: "float", str: "str"}


def hint_rule(hint: Any) -> Optional[Rule]:
    """What a type hint states about a value: its kind (``int``, ``Optional[float]`` ...) and, for
    ``Literal[...]``, its allowed values; None for a hint that states neither."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)] if optional else [hint]
    if len(args) != 1:
        return None
    if typing.get_origin(args[0]) is not typing.Literal:
        kind = _KIND_OF_TYPE.get(args[0])
        return Rule(kind, optional=optional) if kind else None
    choices = typing.get_args(args[0])
    kinds = {_KIND_OF_TYPE.get(type(c)) for c in choices}
    if len(kinds) != 1 or None in kinds:  # mixed kinds: not a choice of plain values
        return None
    return Rule(kinds.pop(), choices=choices, optional=optional)


def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}``."""
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def changed_keys(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted paths whose values differ between two plain config dicts."""
    keys: List[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, path + ".")
        elif a != b:
            keys.append(path)
    return keys


def short_dirname(overrides: str, limit: int = 120) -> str:
    """A sweep job's dir name from its overrides: one path component (a '/' in a value such as
    ``dataset.root=../data`` becomes '_'), cut to ``limit`` characters plus a short hash of the
    whole when longer (file names are limited to 255 bytes)."""
    import hashlib

    name = overrides.replace("/", "_")
    if len(name) <= limit:
        return name
    return f"{name[:limit]}...{hashlib.sha1(overrides.encode()).hexdigest()[:8]}"
