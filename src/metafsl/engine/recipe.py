"""The training recipe: ``setup -> train -> validate/save_checkpoint -> test``.

Meta-batches of tasks, validation every ``val_every`` iterations, best/last checkpoints (last
also every ``checkpoint_every_minutes`` and on SIGINT/SIGTERM), resume, divergence guard, final
test.  Knows nothing about any specific algorithm or dataset.  Where a run stands is a
``TrainState`` saved in every checkpoint; evaluations are described by an ``EvalSpec``.

On several workers (``metafsl.engine.distributed``: a ``World`` of N processes) every worker runs
this recipe: it draws its share of the meta-batch from its own stream, the gradients and the
logged loss/accuracy are averaged over the workers, stops and checkpoints are agreed once per
iteration, and only rank 0 writes the run dir and tells the callbacks.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from hydra.utils import instantiate

from metafsl.data.report import episode_need
from metafsl.engine import checkpoint, hooks, ranks
from metafsl.engine import distributed as dist
from metafsl.engine.budget_plan import BudgetPlan
from metafsl.engine.callbacks import Callback, RunInfo, as_list
from metafsl.engine.checkpoint import TrainState
from metafsl.engine.components import build, build_train_stream, parameter_groups
from metafsl.engine.evaluate import EvalSpec, evaluate, score_test, test_time_choices
from metafsl.engine.preflight import check_episodes, has_validation
from metafsl.engine.resume import StartPlan
from metafsl.engine.run_dir import BEST, LAST, metrics_log
from metafsl.engine.summary import RunSummary
from metafsl.errors import Interrupted, UserError
from metafsl.models import weights

log = logging.getLogger(__name__)

#: default cadence of last.pt between validations (trainer.checkpoint_every_minutes)
CHECKPOINT_EVERY_MINUTES = 5.0
_SIGNALS = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class TrainRecipe:
    """Train (or resume) the run described by the resolved config ``cfg`` in ``run_dir``; what it
    does is told to ``callbacks`` (``metafsl.engine.callbacks``)."""

    def __init__(self, cfg: Dict[str, Any], run_dir: Path, callbacks: Sequence[Callback] = (),
                 run_info: Optional[RunInfo] = None, world: Optional[dist.World] = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.world = world or dist.World()
        self.tr, self.ep = cfg["trainer"], cfg["episode"]
        self.state = TrainState()
        self.log = metrics_log(self.run_dir)
        self.callbacks = as_list([*callbacks, hooks.Listeners()])
        self.run_info = run_info or RunInfo(self.run_dir, cfg)
        self.untrained: Optional[Dict[str, float]] = None
        #: the per-class report of the final test (datasets with named classes), written by the caller
        self.class_report = None
        self.stop_signal: Optional[int] = None
        self.saved_iteration = -1  # the iteration last.pt holds
        self.seconds = 0.0

    # ------------------------------------------------------------------ setup
    def setup(self, start: StartPlan) -> None:
        torch.manual_seed(self.cfg["seed"])
        weights.check_available(self.cfg["backbone"])  # offline without the weights: before the data loads
        self.parts = build(self.cfg, initialise=True)
        self.algo, self.ds, self.device = self.parts.algorithm, self.parts.dataset, self.parts.device
        self.data_report = self.ds.report(episode_need(self.ep))
        if self.data_report:  # one line naming unreadable files and classes too small
            log.info(self.data_report.line())
        self._check_episodes()
        test_time_choices(self.algo, EvalSpec.from_config(self.cfg))  # eval.bn, eval.finetune_*: before training
        self.sampler = build_train_stream(self.algo, self.ds["train"], self.ep, self.device,
                                          dist.rank_seed(self.cfg["seed"], self.world.rank), self.parts.preprocess)
        groups = parameter_groups(self.algo, self.cfg["backbone"].get("lr"))
        if self.tr["iterations"] > 0 and not any(g["params"] for g in groups):
            raise UserError(f"Nothing to train: algo {self.cfg['algo']['name']} has no parameters besides "
                            "its backbone and backbone.freeze=true; set trainer.iterations=0 to evaluate "
                            "the frozen backbone, or backbone.freeze=false.")
        self.optimizer = instantiate(self.tr["optimizer"])(params=groups)
        self.scheduler = instantiate(self.tr["scheduler"])(optimizer=self.optimizer) \
            if self.tr.get("scheduler") else None
        # trainer.fit_to_budget: the end and the schedule planned by the clock (before a resume)
        self.plan = BudgetPlan(self.tr, self.scheduler) if self.tr.get("fit_to_budget") else None
        if not self.world.main:  # its own global random stream too (augmentation, dropout)
            torch.manual_seed(dist.rank_seed(self.cfg["seed"], self.world.rank))
        if start.checkpoint is not None:
            self._restore(start)
        else:
            if self.world.main:
                self.log.clear()  # a rerun of a run stopped before its first checkpoint starts clean
            if self.cfg.get("extra", {}).get("eval_untrained"):
                self.untrained = self.test()
        dist.broadcast_module(self.algo, self.world)  # the same parameters on every worker

    def _check_episodes(self) -> None:
        self.has_val = has_validation(self.ds, self.cfg)
        check_episodes(self.algo, self.ds, self.cfg)

    def _restore(self, start: StartPlan) -> None:
        ck, path = start.checkpoint, self.run_dir / LAST
        checkpoint.load_weights(self.algo, ck["model"], path)
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None and ck.get("scheduler"):
            self.scheduler.load_state_dict(ck["scheduler"])
        self.state = checkpoint.train_state(ck)
        if self.plan is not None and self.state.planned_iterations:
            self.plan.planned = self.state.planned_iterations
            # other minutes: the old end is no longer the budget's (a run the clock stopped a step
            # before its plan would otherwise end there, at the old plan, with time left)
            self.plan.stale = "trainer.max_minutes" in start.changes
        self._restore_streams(ck)
        self.saved_iteration = self.state.iteration
        if self.world.main:
            self.log.truncate_after(self.state.iteration, self.state.val_iteration)
        self._apply_changes(start.changes)
        log.info(f"Resuming {self.run_dir} from iteration {self.state.iteration}.")

    def _restore_streams(self, ck: Dict[str, Any]) -> None:
        """This worker's task stream and random state: its own as saved when the checkpoint was
        written by as many workers (exact), else rank 0's for rank 0 and, for the others, a stream
        derived from (seed, rank, iteration) (a different but reproducible continuation)."""
        ranks = ck.get("workers") or [{"sampler": ck["sampler"], "rng": ck["rng"]}]
        if len(ranks) == self.world.size or self.world.main:
            mine = ranks[self.world.rank]
            self.sampler.load_state_dict(mine["sampler"])
            torch.set_rng_state(mine["rng"]["torch"])
            if self.device.type == "cuda" and mine["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(mine["rng"]["cuda"], self.device)
            return
        seed = dist.resumed_seed(self.cfg["seed"], self.world.rank, self.state.iteration)
        self.sampler.generator.manual_seed(seed)
        torch.manual_seed(seed)

    def _apply_changes(self, changes: Dict[str, Any]) -> None:
        """Settings changed on resume: the learning rate goes into the optimiser (and scheduler);
        the others are read from the config; all of them are recorded in metrics.jsonl."""
        if not changes:
            return
        if "trainer.optimizer.lr" in changes:
            self._set_learning_rate(*changes["trainer.optimizer.lr"])
        self._record({"iteration": self.state.iteration, "split": "resume",
                      "changed": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
        shown = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items())
        log.info(f"Resuming with changed settings: {shown}.")

    def _set_learning_rate(self, old: float, new: float) -> None:
        """Scale the current rate (and a scheduler's base rates) by new/old, so that a schedule
        continues from where it was with the new peak."""
        ratio = float(new) / float(old) if old else None
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * ratio if ratio is not None else float(new)
            if "initial_lr" in group:
                group["initial_lr"] = group["initial_lr"] * ratio if ratio is not None else float(new)
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr * ratio if ratio is not None else float(new)
                                       for lr in self.scheduler.base_lrs]

    # ------------------------------------------------------------------ training
    def train(self) -> None:
        self.end = self.plan.planned if self.plan is not None else int(self.tr["iterations"])
        max_seconds = 60 * float(self.tr["max_minutes"]) if self.tr.get("max_minutes") else None
        self.t_start = time.perf_counter() - self.state.seconds
        self.last_save = time.perf_counter()
        # a resumed run whose wall-clock budget is already spent trains no further
        spent = max_seconds is not None and self.state.seconds >= max_seconds
        it = self.end + 1 if spent else self.state.iteration + 1
        if self.plan is not None and not spent and (it > self.end or self.plan.stale):  # more minutes
            self._replan(self.state.iteration)
        self.run_info.start_iteration, self.run_info.iterations = self.state.iteration, self.end
        self.run_info.last_val = self.state.last_val
        self.callbacks.on_train_start(self.run_info)
        try:
            with self._stop_on_signals():
                while it <= self.end:  # the end moves under trainer.fit_to_budget
                    if self._iteration(it, max_seconds):
                        log.info(f"Time budget of {self.tr['max_minutes']} min reached at iteration {it}.")
                        break
                    it += 1
                if self.state.val_iteration != self.state.iteration or self.end == 0:
                    # resumed after a kill during the final validation (or nothing to train): validate now
                    self.validate(self.state.iteration)
        finally:
            self.callbacks.on_train_stop()
        self.seconds = time.perf_counter() - self.t_start

    def _iteration(self, it: int, max_seconds: Optional[float]) -> bool:
        """One training step with its logging and checkpoints; True when the time budget is spent."""
        t0 = time.perf_counter()
        self._step(it)
        out_of_time, checkpoint_due = self._agreed(max_seconds)
        if self.plan is not None:
            self.plan.step_took(time.perf_counter() - t0)
        final = it == self.end or out_of_time
        self._log_train(it, final)
        if it % self.tr["val_every"] == 0 or final:
            if final:  # training is over: keep it even if the final validation is killed
                self.save_checkpoint(LAST)
                self.callbacks.on_event("final_validation_start", it)
            elif self.plan is not None:  # before the validation, so that its checkpoints hold the plan
                self._replan(it)
            t0 = time.perf_counter()
            self.validate(it)
            if self.plan is not None:
                self.plan.validation_took(time.perf_counter() - t0)
        elif checkpoint_due:
            self.save_checkpoint(LAST)
        self.callbacks.on_event("iteration_end", it)
        if self.stop_signal is not None:
            self._stop(it)
        return out_of_time

    def _replan(self, it: int) -> None:
        """trainer.fit_to_budget: rank 0 plans the end by its clock; every worker moves to it."""
        record = self.plan.replan(it, time.perf_counter() - self.t_start) if self.world.main else None
        self.plan.steps.clear()
        record = dist.share(record, self.world)
        if record is None:
            return
        self.plan.planned = self.end = self.state.planned_iterations = int(record["iterations"])
        self.plan.apply(it)
        self.run_info.iterations = self.end
        self._record(record)

    def _agreed(self, max_seconds: Optional[float]):
        """(out of time, checkpoint due), decided on rank 0, with a signal received by any worker
        made a stop on all of them: one all-reduce per iteration."""
        out_of_time = self.world.main and max_seconds is not None \
            and time.perf_counter() - self.t_start >= max_seconds
        due = self.world.main and self._checkpoint_due()
        stop, out_of_time, due = dist.agree([self.stop_signal or 0, out_of_time, due], self.world, self.device)
        if stop and self.stop_signal is None:
            self.stop_signal = int(stop)
        return bool(out_of_time), bool(due)

    def _step(self, it: int) -> None:
        self.algo.train()
        batch = self.sampler.sample(dist.tasks_per_worker(self.tr["meta_batch_size"], self.world), train=True)
        self.optimizer.zero_grad(set_to_none=True)
        # forward passes under runtime.amp (bf16 on GPU; no-op otherwise), gradients into .grad
        loss, acc = self.algo.meta_backward(batch, self.parts.runtime.autocast)
        dist.average_gradients(self.algo, self.world)
        loss, acc = dist.mean([loss, acc], self.world, self.device)
        if not math.isfinite(loss):
            self._diverged(it, f"the training loss ({float(loss)})")
        if self.tr.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(self.algo.parameters(), self.tr["grad_clip"])
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self._check_finite(it)
        self.state.iteration = it
        self.state.loss_sum += float(loss)
        self.state.acc_sum += float(acc)
        self.state.count += 1

    def _check_finite(self, it: int) -> None:
        """Gradients, parameters and buffers (batch-norm statistics) after the step, in one pass."""
        params = list(self.algo.named_parameters())
        tensors = {**{f"the gradient of {n}": p.grad for n, p in params},
                   **{f"parameter {n}": p.detach() for n, p in params},
                   **{f"buffer {n}": b for n, b in self.algo.named_buffers()}}
        what = checkpoint.non_finite(tensors)
        if what is not None:
            self._diverged(it, what)

    def _diverged(self, it: int, what: str) -> None:
        """Stop a diverged training without saving it: the checkpoints keep the last good model."""
        self._record({"iteration": it, "split": "diverged", "what": what})
        kept = f"checkpoints/last.pt keeps iteration {self.saved_iteration}" if self.saved_iteration >= 0 \
            else "no checkpoint was written"
        raise UserError(f"Training diverged at iteration {it}: {what} became inf or NaN; stopped without "
                        f"saving it ({kept}); lower the learning rate (trainer.optimizer.lr or "
                        "algo.inner_lr) or set trainer.grad_clip.")

    def _log_train(self, it: int, final: bool) -> None:
        """A row every ``log_every`` iterations, and one for the last (partial) block of a training."""
        if it % self.tr["log_every"] != 0 and not final:
            return
        s = self.state
        rec = {"iteration": it, "split": "train", "loss": s.loss_sum / s.count,
               "acc": 100 * s.acc_sum / s.count, "lr": self.optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - self.t_start, 3)}
        self._record(rec)
        s.loss_sum, s.acc_sum, s.count = 0.0, 0.0, 0

    def _record(self, record: Dict[str, Any]) -> None:
        """A row of metrics.jsonl, then the same row to the callbacks (rank 0 only)."""
        if not self.world.main:
            return
        self.log.write(record)
        self.callbacks.on_metrics(record)

    # ------------------------------------------------------------------ checkpoints and signals
    def _checkpoint_due(self) -> bool:
        minutes = self.tr.get("checkpoint_every_minutes", CHECKPOINT_EVERY_MINUTES)
        return minutes is not None and time.perf_counter() - self.last_save >= 60 * float(minutes)

    def save_checkpoint(self, which: Path) -> None:
        """Called by every worker at the same point (their streams are gathered); rank 0 writes."""
        self.state.seconds = time.perf_counter() - self.t_start
        workers = ranks.gather(self._worker_state())
        if self.world.main:
            payload = self.snapshot()
            if len(workers) > 1:  # every worker's stream: a resume on as many workers is exact
                payload["workers"] = workers
            checkpoint.save(self.run_dir / which, payload)
            self.callbacks.on_event("checkpoint_written", self.state.iteration)
        if which == LAST:
            self.last_save, self.saved_iteration = time.perf_counter(), self.state.iteration

    def _worker_state(self) -> Dict[str, Any]:
        """This worker's task stream and random state (all workers' go into a checkpoint)."""
        return {"sampler": self.sampler.state_dict(), "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}}

    def snapshot(self) -> Dict[str, Any]:
        s = self.state
        return {
            "config": self.cfg,
            "iteration": s.iteration,
            "best": {"acc": s.best_acc, "iteration": s.best_iteration},
            "model": self.algo.state_dict(),
            "preprocessing": self.preprocessing(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "sampler": self.sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            "state": s.to_dict(),
        }

    def preprocessing(self) -> Dict[str, Any]:
        """The run's pixel pipeline (``dataset.normalize``'s statistics or a pretrained backbone's)."""
        pre = self.parts.preprocess
        out = {"image_size": int(self.ds.image_size), "channels": int(self.ds.channels),
               "mean": None if pre.mean is None else pre.mean.flatten().tolist(),
               "std": None if pre.std is None else pre.std.flatten().tolist()}
        input_size = getattr(getattr(self.algo, "backbone", None), "input_size", None)
        if input_size is not None:  # a torchvision/timm backbone resizes to it (models/pretrained.py)
            out["input_size"] = int(input_size)
        return out

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGINT/SIGTERM during training: finish the step, save last.pt, then stop (``_stop``)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signum, frame):
            self.stop_signal = signum

        previous = {s: signal.signal(s, note) for s in _SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop(self, it: int) -> None:
        if self.saved_iteration != it:
            self.save_checkpoint(LAST)
        name = _SIGNALS.get(self.stop_signal, str(self.stop_signal))
        raise Interrupted(f"Stopped by {name} after iteration {it}; its state is saved in "
                          f"{self.run_dir / LAST}: resume with resume=true hydra.run.dir={self.run_dir}.",
                          128 + int(self.stop_signal))

    # ------------------------------------------------------------------ evaluation
    def validate(self, it: int) -> None:
        """Validate at iteration ``it``; write best.pt if it improved, then last.pt."""
        improved = True
        if self.has_val:
            res = evaluate(self.algo, self.ds["val"], EvalSpec.from_config(self.cfg, validation=True),
                           self.device, self.parts.preprocess, runtime=self.parts.runtime)
            res = dist.share(res, self.world)  # rank 0's decides best.pt on every worker
            self._record({"iteration": it, "split": "val", **res})
            self.state.last_val = res["acc"]
            improved = self.state.best_acc is None or res["acc"] > self.state.best_acc
        self.state.val_iteration = it
        if improved:
            self.state.best_acc, self.state.best_iteration = self.state.last_val, it
            self.save_checkpoint(BEST)
        self.save_checkpoint(LAST)

    def test(self, per_class: bool = False) -> Dict[str, float]:
        """Accuracy and macro precision, recall, F1 of the learner as it is now on the run's test
        episodes (``eval.*``); ``per_class``: keep the per-class report (``self.class_report``) of
        a dataset with named classes."""
        spec = EvalSpec.from_config(self.cfg)
        if spec.split not in self.ds.splits:
            raise UserError(f"Dataset '{self.ds.name}' has no '{spec.split}' split.")
        result, report = score_test(self.algo, self.ds[spec.split], spec, self.device, self.parts.preprocess,
                                    self.callbacks, self.parts.runtime,
                                    self.cfg["dataset"]["name"] if per_class else "")
        if per_class:
            self.class_report = report
        return result

    def final_test(self) -> Dict[str, Any]:
        """Test the best checkpoint (the last one without a validation split)."""
        self.world.barrier()  # rank 0 has written it
        best = checkpoint.load(self.run_dir / BEST, map_location=self.device)
        checkpoint.load_weights(self.algo, best["model"], self.run_dir / BEST)
        self.callbacks.on_event("test_start", int(best["iteration"]))
        t0 = time.perf_counter()
        res = self.test(per_class=True)
        return {**res, "seconds": round(time.perf_counter() - t0, 2),
                "checkpoint": "best" if self.has_val else "last", "iteration": best["iteration"]}

    # ------------------------------------------------------------------ the whole run
    def run(self) -> RunSummary:
        """Train, test, and return the run's summary (not yet written: the caller prints it first)."""
        summary = RunSummary.from_config(self.cfg)  # the code and threads at the start, not after hours
        self.train()
        summary.data = self.data_report.to_dict()
        summary.train = {"iterations": self.state.iteration, "seconds": round(self.seconds, 2),
                         "planned_iterations": int(self.end)}
        if self.plan is not None:  # the first plan, then the clock's
            summary.train.update(fit_to_budget=True, configured_iterations=int(self.tr["iterations"]))
        if self.world.size > 1:  # one-episode methods (meta_batch_size 1) took one per worker
            summary.train.update(workers=self.world.size, episodes_per_step=self.world.size *
                                 dist.tasks_per_worker(self.tr["meta_batch_size"], self.world))
        summary.val = {"best_acc": self.state.best_acc, "best_iteration": self.state.best_iteration}
        if self.untrained is not None:
            summary.untrained = self.untrained
        if self.cfg["test"]:
            summary.test = self.final_test()
        return summary
