"""metafsl as a library: compose a config, train, evaluate, predict.

    from metafsl import api
    cfg = api.compose("train", ["algo=maml", "episode=5w1s"])
    summary = api.train(cfg, "runs/maml")                 # -> RunSummary (summary.json)
    summary = api.evaluate("runs/maml", ["episode=20w1s"]) # a test record appended to summary.tests
    result = api.predict("runs/maml", "support/", "query/")
    exported = api.export("runs/maml", "support/", "onnx", "maml.onnx")  # one standalone file
    task_map = api.tasks("runs/maml", episodes=200)        # test episodes embedded, in 2-D
    folder = api.write_tasks(task_map, "runs/maml")        # <run>/tasks/<stamp>/task_map.{png,csv}
    problems = api.validate(["algo=maml", "episode=20w1s"])  # every check made before work

The commands, ``reproduce``, ``demo`` and the tests call these; nothing here re-enters the
command line.  Each function returns when its record is written; problems a user can fix raise
``metafsl.errors.UserError`` (one sentence).  A library call is silent: pass
``callbacks=[metafsl.reporting.run_report.ConsoleReport()]`` for what the CLI shows, or your own
``metafsl.engine.callbacks.Callback``; the loggers a config names (``logger=csv`` ...) always run.

Imports: modules that load torch (the engine's recipe, checkpoints, learners) are imported inside
the functions that need them, so that ``import metafsl.api`` stays light (the CLI's ``--help``
and ``list`` never pay for torch); everything else is imported here.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from metafsl.arguments import last_value, split
from metafsl.conf import group_options
from metafsl.config import check_run_config, flatten, short_dirname
from metafsl.engine.callbacks import Callback, RunInfo, TestInfo, as_list
from metafsl.engine.run_dir import (
    BEST,
    LAST,
    RESULT,
    SUMMARY,
    RunLock,
    find,
    hydra_unique_dir,
    made_for_this_run,
    remove_orphan_temp_files,
    saved_config,
    unique_dir,
    write_failed,
    write_json,
    write_snapshot,
)
from metafsl.engine.summary import RunSummary
from metafsl.errors import UserError
from metafsl.overrides import check_group_overrides, config_error, config_file, unknown_key_error

log = logging.getLogger(__name__)
PathLike = Union[str, Path]
Callbacks = Optional[Sequence[Callback]]
#: config groups whose option a tested run keeps unless the user picks another
KEPT_GROUPS = ("dataset", "backbone", "algo", "episode", "trainer", "eval")
#: scheduler arguments counted in iterations, scaled with ``budget``
_SCHEDULE_KEYS = ("step_size", "T_max", "total_iters", "total_steps", "milestones", "T_0")
#: algo options counted in training iterations, scaled by ``budget`` like the LR schedule
_ALGO_SCHEDULE_KEYS = ("msl_iterations", "first_order_until")


# ----------------------------------------------------------------------------- configs
def compose(command: str = "train", overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``metafsl <command> <overrides>`` would run with (without its ``hydra`` node)."""
    register_resolvers()
    overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    problem = check_group_overrides(overrides)
    if problem:
        raise UserError(problem)
    try:
        with config_file(overrides) as composed, \
                initialize_config_module(config_module="metafsl.conf", version_base=None):
            return hydra_compose(config_name=command, overrides=composed)
    except UserError:
        raise
    except Exception as exc:
        sentence = unknown_key_error(exc, overrides) or config_error(exc)
        if sentence is None:
            raise
        raise UserError(sentence) from None


def resolved(cfg: Union[DictConfig, Dict[str, Any]], check: bool = True) -> Dict[str, Any]:
    """A config as a plain dict with every interpolation resolved, checked (ranges, types,
    ``_target_`` arguments) before any work."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # a missing value or a broken interpolation in the user's config
        raise UserError(f"The configuration is incomplete: {exc}".splitlines()[0]) from None
    if check:
        check_run_config(plain)
        if isinstance(plain.get("algo"), dict) and "_target_" in plain["algo"]:
            from metafsl.engine.evaluate import check_transductive

            check_transductive(plain)
    return plain


def register_resolvers() -> None:
    """The OmegaConf resolvers metafsl's configs use (idempotent): ``metafsl.unique_dir`` (a new
    run dir) and ``metafsl.dirname`` (a sweep job's dir name); done by whatever composes a config
    (this module and the Hydra apps of the commands)."""
    if not OmegaConf.has_resolver("metafsl.dirname"):
        OmegaConf.register_new_resolver("metafsl.dirname", short_dirname)
    if not OmegaConf.has_resolver("metafsl.unique_dir"):
        OmegaConf.register_new_resolver("metafsl.unique_dir", hydra_unique_dir, use_cache=True)


def _scale(value, budget: float):
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(1, int(math.ceil(value * budget)))
    if isinstance(value, list):
        return [_scale(v, budget) for v in value]
    return value


def _scale_schedule(node, budget: float):
    if isinstance(node, dict):
        return {k: (_scale(v, budget) if k in _SCHEDULE_KEYS else _scale_schedule(v, budget))
                for k, v in node.items()}
    return node


def apply_budget(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``budget=<fraction>``: scale iterations, the validation and log cadence, the LR-schedule
    steps and MAML++'s schedules (and the minutes of a run planned by the clock,
    ``trainer.fit_to_budget``), for a quick approximate run of a preset (recorded in summary.json)."""
    budget = float(cfg.get("budget", 1.0))  # its range is checked with the config (config.RULES)
    if budget == 1.0:
        return cfg
    cfg = copy.deepcopy(cfg)
    tr = cfg["trainer"]
    if int(tr["iterations"]) == 0:  # an evaluation of the model as built: nothing to scale
        return cfg
    tr["iterations"] = _scale(int(tr["iterations"]), budget)
    if tr.get("fit_to_budget") and tr.get("max_minutes"):  # planned by the clock: the clock is what scales
        tr["max_minutes"] = float(tr["max_minutes"]) * budget
    for key in ("val_every", "log_every"):
        tr[key] = min(_scale(int(tr[key]), budget), tr["iterations"])
    if tr.get("scheduler"):
        tr["scheduler"] = _scale_schedule(tr["scheduler"], budget)
    for key in _ALGO_SCHEDULE_KEYS:  # a method's own schedules in training iterations (MAML++)
        if int((cfg.get("algo") or {}).get(key) or 0) > 0:
            cfg["algo"][key] = _scale(int(cfg["algo"][key]), budget)
    return cfg


# ----------------------------------------------------------------------------- train
def train(cfg: Union[DictConfig, Dict[str, Any]], run_dir: Optional[PathLike] = None,
          overrides: Sequence[str] = (), hydra_cfg: Any = None, callbacks: Callbacks = None,
          created: Optional[bool] = None) -> RunSummary:
    """Train (or, with ``resume=true``, continue) the run ``cfg`` describes in ``run_dir`` (default:
    a new unique dir under ``<paths.output_dir>/train``).  Everything is checked, under the run
    dir's lock, before anything is written into it.  ``callbacks`` hear of the run's progress
    (none: silent); the config's loggers and the run's figure are added to them.  ``created``:
    whether ``run_dir`` was made for this training (default: it does not exist yet, or is a new
    empty default dir); a training refused before any work then leaves no trace of it.

    ``distributed.nproc_per_node=N`` (and ``nnodes``...): the training runs on N workers started
    here by PyTorch's elastic launcher, and this call returns rank 0's summary; under a launcher
    (an external ``torchrun``: ``RANK`` set) this process is one of the workers."""
    from metafsl.reporting.loggers import run_callbacks

    if run_dir is not None and created is None:
        created = made_for_this_run(Path(run_dir))
    try:
        plain = apply_budget(resolved(cfg))
        world = _world(plain)
        own = run_callbacks(plain) if world.main else []  # checks the loggers' packages before any work
        _set_threads(plain, hydra_cfg, world.local_size)
    except UserError:
        _remove_if_empty(run_dir, created)
        raise
    if run_dir is None:
        run_dir, created = unique_dir(Path(plain["paths"]["output_dir"]) / "train"), True
    from metafsl.engine import launch

    if launch.needs_launch(plain):
        return _launched(plain, cfg, Path(run_dir), overrides, hydra_cfg, callbacks, created)
    try:
        return _train_here(plain, cfg, _shared_dir(Path(run_dir), created, world), overrides, hydra_cfg,
                           as_list([*(callbacks or []), *own] if world.main else []), created, world)
    finally:
        if world.size > 1:
            from metafsl.engine.distributed import leave

            leave()


def _train_here(plain: Dict[str, Any], cfg: Any, run_dir: Path, overrides: Sequence[str], hydra_cfg: Any,
                every: Callback, created: Optional[bool], world) -> RunSummary:
    """The training in this process (one of the workers of a distributed run, or the only one)."""
    info = RunInfo(run_dir, plain, overrides=list(overrides),
                   sweep_dir=run_dir.parent if _in_sweep(hydra_cfg) else None)
    with contextlib.ExitStack() as stack:
        recipe, start = _locked_start(stack, info, cfg, hydra_cfg, every, created, world)
        if recipe is None:
            return start.previous
        summary = recipe.run()
        if not world.main:
            return summary
        every.on_train_end(summary, run_dir)  # shown before it is written
        with RunSummary.locked(run_dir):
            if start.previous is not None:  # re-read: a `metafsl test` may have added a record since
                summary.continue_from(RunSummary.read_or_none(run_dir) or start.previous)
            summary.write(run_dir, failed=lambda exc: write_failed(run_dir, SUMMARY, exc,
                                                                   kept="the results are shown above"))
        _write_class_report(recipe.class_report, run_dir)
    return summary


def _locked_start(stack: contextlib.ExitStack, info: RunInfo, cfg: Any, hydra_cfg: Any, every: Callback,
                  created: Optional[bool], world):
    """``_start`` under the run dir's lock (held by rank 0); a refusal on any worker is raised on
    every worker with its sentence, and leaves no trace of a run dir made for the training."""
    from metafsl.engine import distributed

    lock = None
    try:
        lock = stack.enter_context(RunLock(info.run_dir)) if world.main else None
        started = _start(info, cfg, hydra_cfg, every, world)
        distributed.first_error(None, world)
        return started
    except UserError as exc:
        if lock is not None:
            lock.discard(remove_dir=bool(created))
        if not getattr(exc, "shared", False):
            distributed.first_error(exc, world)
        raise


def _world(plain: Dict[str, Any]):
    """This process's place among the run's workers (checked first; joined under a launcher)."""
    from metafsl.engine import distributed, launch, slurm

    slurm.export_torch_env()  # a task of a multi-task submitit SLURM job is one worker
    distributed.check(plain, launch.world_size(plain))
    world = distributed.env_world() or distributed.World()
    if world.size > 1:
        plain["device"] = distributed.worker_device(plain["device"], world)
        if distributed.restarted():  # the launcher restarted the workers: continue from last.pt
            plain["resume"] = True
        distributed.join(plain, world)
    return world


def _shared_dir(run_dir: Path, created: Optional[bool], world) -> Path:
    """Rank 0's run dir on every worker (an external torchrun gave each its own default dir)."""
    from metafsl.engine.distributed import share

    shared = Path(share(str(run_dir), world))
    if shared != run_dir:
        _remove_if_empty(run_dir, created)
    return shared


def _remove_if_empty(run_dir: Optional[PathLike], created: Optional[bool]) -> None:
    if run_dir is not None and created:
        with contextlib.suppress(OSError):
            Path(run_dir).rmdir()  # only ever succeeds on an empty directory


def _launched(plain: Dict[str, Any], cfg: Any, run_dir: Path, overrides: Sequence[str], hydra_cfg: Any,
              callbacks: Callbacks, created: Optional[bool]) -> RunSummary:
    """Start the workers ``distributed.*`` asks for, each running ``train`` (``_worker``); returns
    the summary rank 0 wrote."""
    from metafsl.engine import launch

    plain_cfg = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    args = (plain_cfg, str(run_dir), list(overrides), hydra_cfg, launch.picklable(callbacks or []),
            bool(created), logging.getLogger("metafsl").getEffectiveLevel())
    try:
        launch.launch(plain, _worker, args)
    except UserError:
        _remove_if_empty(run_dir, created)
        raise
    summary = RunSummary.read_or_none(run_dir)
    if summary is None:
        raise UserError(f"The workers ended without writing {run_dir / SUMMARY}; see the messages above.")
    return summary


def _worker(cfg: Dict[str, Any], run_dir: str, overrides: List[str], hydra_cfg: Any, callbacks: list,
            created: bool, log_level: int):
    """One worker of a launched training (module-level: the launcher pickles it): rank 0 shows the
    run; returns None, or the sentence and exit code of the user error that stopped it."""
    import warnings

    from metafsl.errors import exit_code

    warnings.filterwarnings("ignore")
    main = os.environ.get("RANK") == "0"
    logging.basicConfig(level=log_level if main else logging.WARNING, format="%(message)s")
    try:
        train(cfg, run_dir, overrides, hydra_cfg, callbacks if main else None, created=created)
    except UserError as exc:
        return str(exc), exit_code(exc)
    return None


def _start(info: RunInfo, cfg: Any, hydra_cfg: Any, callbacks: Callback, world=None):
    """How the training starts, its recipe set up (data loaded, episodes checked) and its snapshot
    written: ``(recipe, start)``, or ``(None, start)`` for a finished run that is left alone."""
    from metafsl.engine.distributed import World, restarted
    from metafsl.engine.recipe import TrainRecipe
    from metafsl.engine.resume import plan

    world = world or World()
    run_dir, plain = info.run_dir, info.config
    start = plan(plain, run_dir, start_missing=info.sweep_dir is not None or restarted())
    if start.mode == "finished":
        done = (start.previous.train or {}).get("iterations")
        log.info(f"{run_dir} is a finished run ({done} iterations): nothing to resume, nothing changed; "
                 "pass a larger trainer.iterations to continue it.")
        return None, start
    if world.main:
        remove_orphan_temp_files(run_dir)  # a killed run's half-written files
    callbacks.on_run_start(info)
    recipe = TrainRecipe(plain, run_dir, callbacks, info, world)
    recipe.setup(start)
    if world.main:  # after the checks of setup (data, episodes): a refused resume leaves the snapshot as it was
        write_snapshot(run_dir, cfg, info.overrides, hydra_cfg)
    return recipe, start


def _set_threads(plain: Dict[str, Any], hydra_cfg: Any, workers: int = 1) -> None:
    """``runtime.threads=auto``: the cores shared by the sweep's parallel jobs and this machine's
    workers of a distributed run."""
    from metafsl.engine.runtime import apply_threads

    apply_threads(plain, parallel_jobs(hydra_cfg) * workers)


def parallel_jobs(hydra_cfg: Any) -> int:
    """How many jobs of this training's sweep run at once on this machine: the joblib launcher's
    ``n_jobs`` (joblib's meaning: -1 all cores, -2 all but one, ...); 1 outside a sweep."""
    n = OmegaConf.select(hydra_cfg, "hydra.launcher.n_jobs") if _in_sweep(hydra_cfg) else None
    if not isinstance(n, int) or isinstance(n, bool) or n == 0:
        return 1
    return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)


def _in_sweep(hydra_cfg: Any) -> bool:
    """Whether this training is one job of a Hydra multirun (`metafsl sweep`): its dir is a
    job dir inside the sweep dir."""
    mode = OmegaConf.select(hydra_cfg, "hydra.mode") if hydra_cfg is not None else None
    return str(mode).endswith("MULTIRUN")


# ----------------------------------------------------------------------------- evaluate
def evaluate(run_dir: PathLike, overrides: Sequence[str] = (), checkpoint: str = "best",
             out_dir: Optional[PathLike] = None, overwrite: bool = False,
             callbacks: Callbacks = None) -> RunSummary:
    """Test a run's checkpoint with its own config plus ``overrides`` (``episode=20w1s``,
    ``eval.episodes=...``, ``protocol=lake20``); the result goes to the callbacks (the console
    shows it), then is appended to the run's ``summary.json`` history and written to ``out_dir``
    (default: a new ``<run>/tests/<stamp>/``; an ``out_dir`` that already holds a result only with
    ``overwrite``)."""
    if out_dir is not None:
        _check_out_dir(Path(out_dir), overwrite)
    plan = test_plan(run_dir, overrides, checkpoint)
    every = as_list(callbacks)
    record, report = _score(plan, every)
    record["overrides"] = list(overrides)
    every.on_test_end(plan.info, record)  # shown before anything is written: a failed write loses nothing
    out = Path(out_dir) if out_dir is not None else _new_dir(plan.run / "tests")
    write_snapshot(out, plan.cfg, [f"run={plan.run}", *overrides])
    write_json(out / RESULT, record)
    _write_class_report(report, out)
    return RunSummary.append_test(plan.run, record, default=RunSummary.from_config(plan.ck["config"]))


@dataclass
class PlannedTest:
    """A checked test of a run's checkpoint: what ``metafsl test`` (and ``validate run=``) works on."""

    run: Path
    path: Path
    ck: Dict[str, Any]
    cfg: Dict[str, Any]
    protocol: Optional[Dict[str, Any]]
    info: TestInfo


def test_plan(run_dir: PathLike, overrides: Sequence[str] = (), checkpoint: str = "best") -> PlannedTest:
    """Every check of a test made before any work: the run dir, its checkpoint (readable, of this
    run's architecture) and the composed test config."""
    from metafsl.engine import checkpoint as ckpt

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"Run dir {run} does not exist.")
    path = find(run, checkpoint)
    ck = ckpt.load(path)
    _say_which_config(run, ck, path)
    verify_checkpoint(run, ck, path)
    fresh = compose("test", [*_group_choices(ck["config"], overrides), *overrides])
    cfg = effective_config(ck["config"], fresh, overrides)
    # the learner is built as trained (a fixed head's size comes from the training episodes);
    # test episodes it cannot classify are then refused by its check_episode, in one sentence
    cfg["episode"]["train"] = ck["config"]["episode"]["train"]
    _as_trained(cfg, ck, path)
    protocol = fresh.get("protocol")
    proto = OmegaConf.to_container(protocol, resolve=True) if protocol is not None else None
    info = TestInfo(run, checkpoint, int(ck["iteration"]), cfg, (proto or {}).get("name", ""))
    return PlannedTest(run, path, ck, cfg, proto, info)


def _as_trained(cfg: Dict[str, Any], ck: Dict[str, Any], path: Path) -> None:
    """A test on another dataset than the run's (a cross-domain test) decodes its images at the
    run's image size and channels where the loader takes them (the rest is converted once loaded,
    ``metafsl.data.convert``); the run's normalisation is kept (``_test_parts``)."""
    from metafsl.engine import checkpoint as ckpt

    pre, node = ckpt.Preprocessing.from_checkpoint(ck), cfg["dataset"]
    trained = ck["config"]["dataset"]
    if pre is None:
        if node.get("name") != trained.get("name"):
            raise UserError(f"{path} was written before checkpoints recorded their image size, channels and "
                            f"normalisation, so it can only be tested on dataset={trained.get('name')}.")
        return
    for key, value in (("image_size", pre.image_size), ("channels", pre.channels)):
        if key in node:
            node[key] = value


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; give a directory for the test's record.")
    if (out / RESULT).exists() and not overwrite:
        raise UserError(f"out={out} already holds a test result; pass overwrite=true to replace it, "
                        "or another out=.")


def _new_dir(parent: Path) -> Path:
    try:
        return unique_dir(parent)
    except OSError as exc:
        raise UserError(f"Cannot write the result under {parent} ({exc.strerror}); "
                        "the result above was not saved.") from None


def _test_parts(plan: PlannedTest):
    """The checkpoint's learner with its weights and preprocessing, and the test data (none for a
    protocol that brings its own images)."""
    from metafsl.engine import checkpoint as ckpt
    from metafsl.engine.components import build
    from metafsl.engine.evaluate import EvalSpec, test_time_choices

    pre = ckpt.Preprocessing.from_checkpoint(plan.ck)
    if plan.protocol is not None and pre is not None:
        parts = _without_dataset(plan.cfg, pre)
    else:
        parts = build(plan.cfg, _test_dataset(plan.cfg, pre), training=False,
                      input_size=pre.input_size if pre is not None else None)
    ckpt.load_weights(parts.algorithm, plan.ck["model"], plan.path)
    augment = plan.cfg["dataset"].get("augment", "none")
    if pre is not None:  # the normalisation the model was trained with
        parts.preprocess = pre.preprocess(augment)
    spec = EvalSpec.from_config(plan.cfg)
    # eval.bn, eval.finetune_*; a protocol's runs take eval.tta with fine-tuning (protocols.run_logits)
    test_time_choices(parts.algorithm, spec if plan.protocol is None else dataclasses.replace(spec, tta=1))
    if spec.finetune_steps:
        parts.preprocess.finetune_views(spec.finetune_views)  # one sentence before any work
    return parts


def _test_dataset(cfg: Dict[str, Any], pre):
    """The test data, its images of the run's size and channels (a cross-domain test)."""
    from metafsl.data import load_dataset
    from metafsl.data.convert import to_shape

    ds = load_dataset(cfg["dataset"], cfg["paths"])
    return ds if pre is None else to_shape(ds, pre.channels, pre.image_size)


def _score(plan: PlannedTest, callbacks: Callback):
    """Evaluate the checkpoint on episodes (or a protocol): (the test record, the per-class report
    of a dataset with named classes or None)."""
    from metafsl.engine.evaluate import EvalSpec, score_test

    cfg, proto = plan.cfg, plan.protocol
    parts = _test_parts(plan)
    callbacks.on_test_start(plan.info)
    t0 = time.perf_counter()
    report = None
    if proto is not None:  # e.g. protocol=lake20: not sampled episodes
        from metafsl.engine.protocols import run_protocol

        result = run_protocol(proto, parts, cfg, _ensemble(plan))
    else:
        spec = EvalSpec.from_config(cfg)
        if spec.split not in parts.dataset.splits:
            raise UserError(f"Dataset '{parts.dataset.name}' has no '{spec.split}' split.")
        result, report = score_test(parts.algorithm, parts.dataset[spec.split], spec, parts.device,
                                    parts.preprocess, callbacks, parts.runtime, cfg["dataset"]["name"])
        result.update(episode=cfg["episode"]["test"], eval_seed=cfg["eval"]["seed"])
    return {**result, "seconds": round(time.perf_counter() - t0, 2), "checkpoint": plan.info.checkpoint,
            "iteration": plan.ck["iteration"], "dataset": cfg["dataset"]["name"],
            "train_dataset": plan.ck["config"]["dataset"]["name"],
            "time": _dt.datetime.now().isoformat(timespec="seconds")}, report


def _write_class_report(report, folder: Path) -> None:
    """The per-class report's files (``metafsl.reporting.per_class``) in a test's record dir."""
    if report is not None:
        from metafsl.reporting.per_class import write

        write(report, folder)


def _ensemble(plan: PlannedTest) -> list:
    """The models of ``protocol.ensemble`` (run dirs, their ``checkpoint`` alike), each built as
    for its own test with this protocol, to vote with the tested run's (a lake20 ensemble)."""
    runs = (plan.protocol or {}).get("ensemble") or []
    name = plan.protocol["name"] if runs else ""
    return [_test_parts(test_plan(r, [f"protocol={name}"], plan.info.checkpoint)) for r in runs]


def _without_dataset(cfg: Dict[str, Any], pre):
    """The learner alone, for a test protocol that brings its own images (no dataset is loaded)."""
    from types import SimpleNamespace

    from metafsl.engine import runtime
    from metafsl.engine.components import Components, build_learner, resolve_device

    device = resolve_device(cfg["device"])
    rt = runtime.from_config(cfg, device)
    algorithm = build_learner(cfg, pre.channels, pre.image_size, input_size=pre.input_size).to(device)
    rt.prepare(algorithm)
    shape = SimpleNamespace(name=cfg["dataset"]["name"], image_size=pre.image_size, channels=pre.channels)
    return Components(device, shape, pre.preprocess(), algorithm, rt)


def _group_choices(saved: Dict[str, Any], overrides: Sequence[str]) -> List[str]:
    """``group=option`` for the run's own options (typed composition of the user's overrides)."""
    given = {p[0].lstrip("+~") for p in map(split, overrides) if p}
    choices = []
    for g in KEPT_GROUPS:
        name = (saved.get(g) or {}).get("name")
        if g not in given and name in group_options(g):
            choices.append(f"{g}={name}")
    return choices


#: keys that steer the test command itself, never copied into the run's config
_OWN_KEYS = {"run", "checkpoint", "verbose", "protocol"}


def effective_config(saved: Dict[str, Any], fresh: DictConfig, overrides: Sequence[str]) -> Dict[str, Any]:
    """The saved run config with every key the user overrode replaced by its fresh value."""
    cfg = OmegaConf.create(saved)
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        key = ov.key_or_group
        if ov.is_delete() or key.split(".")[0] in _OWN_KEYS or key.startswith("hydra"):
            continue
        OmegaConf.update(cfg, key, OmegaConf.select(fresh, key), merge=False, force_add=True)
    return resolved(cfg)


def _is_run_config(config: Any) -> bool:
    return isinstance(config, dict) and all(isinstance(config.get(k), dict) for k in _RUN_SECTIONS)


#: what a run config has, at least (a checkpoint's, or a run's .hydra/config.yaml)
_RUN_SECTIONS = ("algo", "backbone", "dataset", "episode")


def _say_which_config(run: Path, ck: Dict[str, Any], path: Path) -> None:
    """A run is tested with its checkpoint's config: refuse a checkpoint without a usable one, and
    say so in one line when the run's ``.hydra/config.yaml`` is missing or not a run config."""
    from metafsl.engine.run_dir import SNAPSHOT

    if not _is_run_config(ck.get("config")):
        raise UserError(f"{path} holds no usable run config to rebuild its model from; test a checkpoint "
                        "written by metafsl train.")
    if _is_run_config(saved_config(run)):
        return
    snapshot = run / SNAPSHOT / "config.yaml"
    why = "is not a readable run config" if snapshot.exists() else "is missing"
    log.info(f"note: {snapshot} {why}; testing with the config saved in {path}.")


def verify_checkpoint(run: Path, ck: Dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose algorithm or backbone is not the run's (e.g. copied from another run)."""
    reference = saved_config(run)
    if not _is_run_config(reference):
        other = run / (LAST if path.name == BEST.name else BEST)
        reference = _checkpoint_config(other)
    if not _is_run_config(reference):
        return
    mine = flatten({k: ck["config"].get(k) for k in ("algo", "backbone")})
    theirs = flatten({k: reference.get(k) for k in ("algo", "backbone")})
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)
                    and not k.endswith("description"))
    if differ:
        shown = "; ".join(f"{k}: {mine.get(k)} in the checkpoint, {theirs.get(k)} in the run"
                          for k in differ[:4])
        raise UserError(f"{path} does not belong to the run in {run} ({shown}); "
                        "test the run that wrote it.")


def _checkpoint_config(path: Path) -> Optional[Dict[str, Any]]:
    from metafsl.engine import checkpoint as ckpt

    if not path.is_file():
        return None
    try:
        return ckpt.load(path)["config"]
    except UserError:
        return None


# ----------------------------------------------------------------------------- validate
def validate(overrides: Sequence[str] = (), run: Optional[PathLike] = None,
             checkpoint: str = "best") -> List[str]:
    """Every check ``train`` (or, with ``run``, ``test``) makes before any work, without training
    or testing: keys, group options, types and ranges, ``_target_`` arguments, loggers, the data,
    the episodes against the data and the learner, a resumed or tested run's checkpoint.  Returns
    every problem found (one sentence each; empty: ready to run)."""
    if run is not None:
        return _validate_test(run, overrides, checkpoint)
    cfg, problems = _compose_all("train", overrides)
    if cfg is None:
        return problems
    try:
        plain = apply_budget(resolved(cfg, check=False))
    except UserError as exc:
        return problems + [str(exc)]
    from metafsl.config import run_config_problems
    from metafsl.engine.preflight import problems_of
    from metafsl.reporting.loggers import loggers

    config_problems = run_config_problems(plain)
    problems += config_problems + problems_of(lambda: loggers(plain))
    if not config_problems:
        problems += problems_of(lambda: _check_distributed(plain))
    run_dir = last_value(overrides, "hydra.run.dir")
    if run_dir is not None and Path(run_dir).exists():
        from metafsl.engine.resume import plan

        problems += problems_of(lambda: plan(plain, Path(run_dir)))
    if not config_problems:  # the data and the learner are built from a valid config only
        problems += _episode_problems(lambda: _built(plain), plain)
    return problems


def _check_distributed(plain: Dict[str, Any]) -> None:
    from metafsl.engine import distributed, launch, slurm

    slurm.export_torch_env()  # a task of a multi-task submitit SLURM job is one worker
    distributed.check(plain, launch.world_size(plain))


def _built(plain: Dict[str, Any]):
    from metafsl.engine.components import build

    return build(plain)


def _episode_problems(build_parts, cfg: Dict[str, Any], splits: Optional[Sequence[str]] = None) -> List[str]:
    """The episodes against the data and the learner (``splits=None``: a training's, whose
    training stream is built too)."""
    from metafsl.engine.components import build_train_stream
    from metafsl.engine.preflight import episode_problems, problems_of

    try:
        parts = build_parts()
    except UserError as exc:
        return [str(exc)]
    if getattr(parts, "dataset", None) is None or not hasattr(parts.dataset, "splits"):
        return []  # a test protocol with its own images
    problems = episode_problems(parts.algorithm, parts.dataset, cfg, splits)
    if splits is None:
        problems += problems_of(lambda: build_train_stream(
            parts.algorithm, parts.dataset["train"], cfg["episode"], parts.device, cfg["seed"], parts.preprocess))
    return problems


def _compose_all(command: str, overrides: Sequence[str]):
    """(the composed config or None, every problem of the overrides): each override naming an
    unknown option or key is set aside with its sentence, and the rest composed again."""
    problems, kept = [], []
    for arg in overrides:
        problem = check_group_overrides([arg])
        (problems.append(problem) if problem else kept.append(arg))
    while True:
        try:
            return compose(command, kept), problems
        except UserError as exc:
            problems.append(str(exc))
            keys = {arg: arg.lstrip("+~").split("=", 1)[0] for arg in kept if "=" in arg}
            named = sorted((a for a, k in keys.items() if f"'{k}'" in str(exc)), key=lambda a: -len(keys[a]))
            culprit = named[0] if named else None  # the longest key named: algo.lr before algo
            if culprit is None:
                return None, problems
            kept.remove(culprit)


def _validate_test(run: PathLike, overrides: Sequence[str], checkpoint: str) -> List[str]:
    try:
        planned = test_plan(run, overrides, checkpoint)
    except UserError as exc:
        return [str(exc)]
    return _episode_problems(lambda: _test_parts(planned), planned.cfg, (planned.cfg["eval"]["split"],))


# ----------------------------------------------------------------------------- predict
def predict(run_dir: PathLike, support: PathLike, query: Union[PathLike, Sequence[PathLike]],
            checkpoint: str = "best", device: str = "cpu", invert: Optional[bool] = None,
            convert: bool = False, *, batch_size: int = 256, top_k: Optional[int] = None,
            reject_below: Optional[float] = None, reject: Optional[str] = None,
            transductive: str = "none", finetune_steps: Optional[int] = None,
            finetune_lr: Optional[float] = None, finetune_views: Optional[str] = None,
            tta: Optional[int] = None, callbacks: Callbacks = None):
    """Classify ``query`` images with the run's learner adapted once to ``support`` (one
    sub-folder of images per class, named after its class); nothing is written.

    ``query``: a folder (walked recursively), a ``.txt`` list file (one path per line, relative
    to the list), a file, or a glob (``"shots/*.png"``); a string is split on commas, a sequence
    gives one such part per item.  Images are read and classified ``batch_size`` at a time (the
    MAML family and Reptile normalise each batch with its own statistics, so their probabilities
    depend on it).  ``top_k``: classes listed per image (default min(3, classes)).
    ``reject_below=p`` (0 < p < 1): an image whose top probability is below p is "unknown";
    ``reject="auto"`` calibrates that threshold by leave-one-out on the support set (every class
    needs 2 images).  ``transductive`` (tim | bdcspn | ptmap | laplacianshot, metric learners):
    every query image is classified together with all the others (the whole query set is the
    rule's batch: a prediction depends on the other queries).  ``finetune_steps``/``finetune_lr``/
    ``finetune_views``: fine-tune a metric learner's backbone on the support set first (default:
    the run's ``eval.finetune_*``, 0 steps).  ``tta`` (metric learners and transfer baselines):
    every embedding averaged over that many fixed views, as ``eval.tta`` (default: the run's, 1).
    ``callbacks`` hear the progress (``on_eval_start/advance/end``).

    Returns ``metafsl.engine.predict.Predictions``: ``names`` (the classes), ``queries`` and
    ``probs`` (each classified image's probabilities), ``predicted`` (class or "unknown"),
    ``top()``, ``threshold`` and ``calibration``, ``skipped`` ((file, reason) of the query files
    that are not readable images; an unreadable support image raises ``UserError``), and
    ``write_csv(path)``."""
    from metafsl.engine.predict import PredictOptions
    from metafsl.engine.predict import predict as run_predict

    options = PredictOptions(batch_size, top_k, reject_below, reject, transductive, finetune_steps, finetune_lr,
                             finetune_views, tta)
    query = query if isinstance(query, (str, Path)) else [str(q) for q in query]
    return run_predict(Path(run_dir), Path(support), query, checkpoint, device, invert, convert,
                       options, as_list(callbacks))


# ----------------------------------------------------------------------------- export
#: file name endings that name a format when ``format`` is not given
_FORMAT_OF_SUFFIX = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
                     ".torchscript": "torchscript"}


def export(run_dir: PathLike, support: PathLike, format: Optional[str] = None, out: Optional[PathLike] = None,
           checkpoint: str = "best", quantize: str = "none", invert: Optional[bool] = None,
           convert: bool = False, overwrite: bool = False, *, tta: Optional[int] = None,
           finetune_steps: Optional[int] = None, finetune_lr: Optional[float] = None,
           finetune_views: Optional[str] = None):
    """Write the run's learner adapted to ``support`` (one sub-folder of images per class) as one
    standalone classifier file, ``format`` ``onnx`` or ``torchscript`` (default: from ``out``'s
    ending, else onnx), with ``<out>.usage.py`` beside it; ``quantize=int8|fp16`` for ONNX.
    ``out`` defaults to a new ``<run>/exports/<time>_<suffix>.onnx|.pt``; an existing file is
    replaced only with ``overwrite``.  ``tta`` and ``finetune_*``: the test-time choices of
    ``predict`` (default: the run's ``eval``), built into the file, which then gives predict's
    probabilities under the same choices.  Returns ``metafsl.engine.export.Exported`` (what was
    written, the check of the file against the model, the usage snippet)."""
    from metafsl.engine import export as ex
    from metafsl.engine.export_usage import snippet, usage_script
    from metafsl.engine.predict import PredictOptions
    from metafsl.engine.run_dir import stamp, write_text

    options = PredictOptions(finetune_steps=finetune_steps, finetune_lr=finetune_lr,
                             finetune_views=finetune_views, tta=tta)
    options.check()
    if format is not None:
        ex.check_choice(format, quantize)
    fmt = _export_format(format, out)
    ex.check_choice(fmt, quantize)
    suffix = ("" if quantize == "none" else f".{quantize}") + ex.SUFFIX[fmt]
    target = Path(out) if out is not None else Path(run_dir) / "exports" / f"{stamp()}{suffix}"
    usage = target.with_name(target.name + ".usage.py")
    for path in (target, usage):
        if path.is_dir():
            raise UserError(f"{path} is a directory; give a file name such as out={path / ('model' + suffix)}.")
        if path.exists() and not overwrite:
            raise UserError(f"{path} already exists; pass overwrite=true to replace it, or another out=.")
    prepared = ex.prepare(Path(run_dir), Path(support), checkpoint, invert, convert, options)
    result = ex.write(prepared, fmt, quantize, target)
    result.usage_path, result.snippet = usage, snippet(result.metadata, target)
    write_text(usage, usage_script(result.metadata, target, usage, ex.describe(result.metadata)),
               what=f"the usage script {usage}")
    return result


def _export_format(fmt: Optional[str], out: Optional[PathLike]) -> str:
    named = _FORMAT_OF_SUFFIX.get(Path(out).suffix.lower()) if out is not None else None
    if fmt is None:
        return named or "onnx"
    if named is not None and named != fmt:
        kind = {"onnx": "an ONNX", "torchscript": "a TorchScript"}[named]
        raise UserError(f"out={out} names {kind} file but format={fmt}; end the file name in "
                        f"{'.onnx' if fmt == 'onnx' else '.pt'}, or pass format={named}.")
    return fmt


# ----------------------------------------------------------------------------- tasks
def tasks(run_dir: PathLike, overrides: Sequence[str] = (), episodes: int = 200,
          support: Optional[PathLike] = None, checkpoint: str = "best", within: float = 0.5,
          k: int = 3, listed: int = 5, invert: Optional[bool] = None, convert: bool = False,
          callbacks: Callbacks = None):
    """A map of tasks: ``episodes`` test episodes of the run (drawn as ``metafsl test`` draws them,
    with ``overrides`` such as ``episode=5w5s`` or ``eval.seed=``; where the test classes have
    groups, a ``within`` fraction drawn within one group) embedded by the learner's
    ``task_embedding``, projected to 2-D by PCA; the ``listed`` first episodes with their ``k``
    nearest.  ``support`` (one sub-folder of images per class, as for ``predict``) places your task
    on the map among as many training episodes and names the nearest.  Nothing is written (see
    ``write_tasks``).  Returns ``metafsl.engine.task_map.TaskMap``."""
    from metafsl.engine import task_map
    from metafsl.engine.evaluate import EvalSpec
    from metafsl.engine.predict import read_support

    _check_tasks_args(episodes, within, k, listed)
    names_files = read_support(Path(support)) if support is not None else None  # refused before any work
    plan = test_plan(run_dir, overrides, checkpoint)
    if plan.protocol is not None:
        raise UserError("metafsl tasks maps sampled episodes; a test protocol (protocol=...) has none to map.")
    spec = dataclasses.replace(EvalSpec.from_config(plan.cfg), episodes=int(episodes))
    parts = _test_parts(plan)
    splits = parts.dataset.splits
    if spec.split not in splits or (support is not None and "train" not in splits):
        missing = spec.split if spec.split not in splits else "train"
        raise UserError(f"Dataset '{parts.dataset.name}' has no '{missing}' split.")
    parts.algorithm.check_episode(spec.n_way, train=False)
    user = None if names_files is None else _user_task(plan, parts, *names_files, invert, convert)
    result = task_map.build(parts.algorithm, splits[spec.split], spec, dataset=parts.dataset.name,
                            device=parts.device, preprocess=parts.preprocess, within=within, k=k, listed=listed,
                            train_split=splits.get("train"), user=user, callbacks=as_list(callbacks))
    ep = f"{spec.n_way}-way {spec.n_shot}-shot"
    result.algo, result.embedding = plan.cfg["algo"]["name"], parts.algorithm.task_embedding_kind
    result.title = f"{result.algo} on {parts.dataset.name} {spec.split} tasks, {ep} ({plan.run.name})"
    result.run = plan.run
    return result


def _check_tasks_args(episodes: Any, within: Any, k: Any, listed: Any) -> None:
    def whole(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    if not whole(episodes, 2):
        raise UserError(f"episodes must be an integer >= 2 (a map needs at least two tasks; got {episodes!r}).")
    if isinstance(within, bool) or not isinstance(within, (int, float)) or not 0 <= within <= 1:
        raise UserError(f"within must be a fraction between 0 and 1 (got {within!r}).")
    if not whole(k, 1) or not whole(listed, 0):
        raise UserError(f"nearest must be an integer >= 1 and listed >= 0 (got {k!r}, {listed!r}).")


def _user_task(plan: PlannedTest, parts, names: List[str], files: List[List[Path]], invert: Optional[bool],
               convert: bool):
    """The user's support folder as a task of the run's image format (checked against the learner)."""
    import numpy as np
    import torch

    from metafsl.engine.predict import INVERTED, load_image
    from metafsl.engine.task_map import UserTask

    parts.algorithm.check_episode(len(names), train=False)
    invert = plan.cfg["dataset"]["name"] in INVERTED if invert is None else invert
    size, channels = parts.dataset.image_size, parts.dataset.channels
    arrays = [load_image(p, size, channels, invert, convert) for group in files for p in group]
    x = parts.preprocess(torch.from_numpy(np.stack(arrays)).to(parts.device), train=False)
    y = torch.tensor([i for i, group in enumerate(files) for _ in group], device=parts.device)
    return UserTask(x, y, names)


def write_tasks(task_map, run_dir: Optional[PathLike] = None) -> Path:
    """Write a map of ``tasks`` (``task_map.png``, ``task_map.csv``, ``nearest.csv``) into a new
    ``<run>/tasks/<stamp>/`` (``run_dir`` default: the map's run); returns that folder."""
    from metafsl.reporting.task_map import write

    folder = _new_dir(Path(run_dir if run_dir is not None else task_map.run) / "tasks")
    write(task_map, folder)
    return folder
