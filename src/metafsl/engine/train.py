"""Meta-training: meta-batches of tasks, validation every K iterations, best/last checkpoints,
resume, final test.  Knows nothing about any specific algorithm or dataset."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from hydra.utils import instantiate

from metafsl.data.report import episode_need
from metafsl.data.sampler import EpisodeSampler
from metafsl.engine import checkpoint, hooks
from metafsl.engine.components import Components, build
from metafsl.engine.evaluate import evaluate
from metafsl.engine.run_dir import BEST, LAST, METRICS, SUMMARY, MetricsLog, write_json
from metafsl.errors import UserError
from metafsl.reporting import console as out


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summary_base(cfg: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "algo": cfg["algo"]["name"],
        "dataset": cfg["dataset"]["name"],
        "backbone": cfg["backbone"]["name"],
        "episode": dict(cfg["episode"]),
        "seed": cfg["seed"],
        "name": cfg.get("name") or "",
        "published": cfg.get("published") or {},
    }


def test_split(comp: Components, cfg: Dict[str, Any], progress=None) -> Dict[str, float]:
    spec = cfg["episode"]["test"]
    ev = cfg["eval"]
    split = ev.get("split", "test")
    if split not in comp.dataset.splits:
        raise UserError(f"Dataset '{comp.dataset.name}' has no '{split}' split.")
    return evaluate(comp.algorithm, comp.dataset[split], spec["n_way"], spec["n_shot"], spec["n_query"],
                    ev["episodes"], ev["seed"], comp.device, comp.pixels, ev["batch_episodes"],
                    cfg["episode"].get("within_alphabet", False), split, progress, comp.runtime)


def train(cfg: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    """Train (or resume) the run described by the resolved config ``cfg`` in ``run_dir``."""
    run_dir = Path(run_dir)
    tr, ep = cfg["trainer"], cfg["episode"]
    torch.manual_seed(cfg["seed"])
    comp = build(cfg)
    algo, ds, device = comp.algorithm, comp.dataset, comp.device
    data_report = ds.report(episode_need(ep))
    if data_report:  # one line, never wrapped; paths are not markup
        out.console.print(data_report.line(), soft_wrap=True, highlight=False, markup=False)
    algo.check_episode(ep["train"]["n_way"], train=True)
    algo.check_episode(ep["test"]["n_way"], train=False)
    within = ep.get("within_alphabet", False)
    sampler = algo.train_source(ds["train"], ep["train"]["n_way"], ep["train"]["n_shot"],
                                ep["train"]["n_query"], device, seed=cfg["seed"], pixels=comp.pixels,
                                within_group=within)
    has_val = "val" in ds.splits and tr["val_episodes"] > 0
    if has_val:  # fail now, not at the first validation, if val episodes are impossible
        EpisodeSampler(ds["val"], ep["test"]["n_way"], ep["test"]["n_shot"], ep["test"]["n_query"],
                       "cpu", within_group=within, split_name="val")
    EpisodeSampler(ds["test"], ep["test"]["n_way"], ep["test"]["n_shot"], ep["test"]["n_query"],
                   "cpu", within_group=within, split_name="test")
    optimizer = instantiate(tr["optimizer"])(params=[p for p in algo.parameters() if p.requires_grad])
    scheduler = instantiate(tr["scheduler"])(optimizer=optimizer) if tr.get("scheduler") else None

    log = MetricsLog(run_dir / METRICS)
    # val_iteration: the last iteration whose validation (and checkpoints) completed
    state = {"iteration": 0, "best_acc": None, "best_iteration": 0, "seconds": 0.0,
             "acc_sum": 0.0, "loss_sum": 0.0, "count": 0, "last_val": None, "val_iteration": 0}
    untrained = None
    if cfg["resume"]:
        if not (run_dir / LAST).exists():
            raise UserError(f"Nothing to resume: {run_dir} has no {LAST}; pass hydra.run.dir=<the run's dir>.")
        ck = checkpoint.load(run_dir / LAST)
        checkpoint.load_weights(algo, ck["model"], run_dir / LAST)
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and ck.get("scheduler"):
            scheduler.load_state_dict(ck["scheduler"])
        sampler.load_state_dict(ck["sampler"])
        torch.set_rng_state(ck["rng"]["torch"])
        if device.type == "cuda" and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"], device)
        state.update(ck["state"])
        # checkpoints from before val_iteration existed were only written after a validation
        state["val_iteration"] = ck["state"].get("val_iteration", state["iteration"])
        log.truncate_after(state["iteration"])
        out.info(f"Resuming {run_dir} from iteration {state['iteration']}.")
    elif (run_dir / LAST).exists():
        raise UserError(f"{run_dir} already holds a run; pass resume=true to continue it, or use a new run dir.")
    elif cfg.get("extra", {}).get("eval_untrained"):
        untrained = test_split(comp, cfg)

    def snapshot() -> Dict[str, Any]:
        return {
            "config": cfg,
            "iteration": state["iteration"],
            "best": {"acc": state["best_acc"], "iteration": state["best_iteration"]},
            "model": algo.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "sampler": sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "state": dict(state),
        }

    def validate(it: int) -> None:
        """Validate at iteration ``it``; write best.pt if it improved, then last.pt."""
        improved = True
        if has_val:
            spec = ep["test"]
            res = evaluate(algo, ds["val"], spec["n_way"], spec["n_shot"], spec["n_query"],
                           tr["val_episodes"], cfg["eval"]["seed"] + 1, device, comp.pixels,
                           cfg["eval"]["batch_episodes"], within, "val", runtime=comp.runtime)
            log.write({"iteration": it, "split": "val", **res})
            state["last_val"] = res["acc"]
            progress.update(bar, val=_fmt(res["acc"], 2))
            improved = state["best_acc"] is None or res["acc"] > state["best_acc"]
        state["val_iteration"] = it
        if improved:
            state["best_acc"], state["best_iteration"] = state["last_val"], it
            checkpoint.save(run_dir / BEST, snapshot())
        checkpoint.save(run_dir / LAST, snapshot())

    iterations = int(tr["iterations"])
    max_seconds = 60 * float(tr["max_minutes"]) if tr.get("max_minutes") else None
    progress = out.training_progress()
    t_start = time.perf_counter() - state["seconds"]
    # a resumed run whose wall-clock budget is already spent trains no further
    first = iterations + 1 if max_seconds and state["seconds"] >= max_seconds else state["iteration"] + 1
    with progress:
        bar = progress.add_task(f"train {cfg['algo']['name']}", total=iterations,
                                completed=state["iteration"], loss="-", acc="-",
                                val=_fmt(state["last_val"], 2))
        for it in range(first, iterations + 1):
            algo.train()
            batch = sampler.sample(tr["meta_batch_size"], train=True)
            optimizer.zero_grad(set_to_none=True)
            # forward passes under runtime.amp (bf16 on GPU; no-op otherwise), gradients into .grad
            loss, acc = algo.meta_backward(batch, comp.runtime.autocast)
            if not torch.isfinite(loss):
                raise UserError(f"The training loss became {float(loss)} at iteration {it}; lower the "
                                "learning rate (trainer.optimizer.lr or algo.inner_lr).")
            if tr.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(algo.parameters(), tr["grad_clip"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            state["iteration"] = it
            state["loss_sum"] += float(loss)
            state["acc_sum"] += float(acc)
            state["count"] += 1
            if it % tr["log_every"] == 0 or it == iterations:
                n = state["count"]
                rec = {"iteration": it, "split": "train", "loss": state["loss_sum"] / n,
                       "acc": 100 * state["acc_sum"] / n, "lr": optimizer.param_groups[0]["lr"],
                       "seconds": round(time.perf_counter() - t_start, 3)}
                log.write(rec)
                progress.update(bar, loss=_fmt(rec["loss"]), acc=_fmt(rec["acc"], 1))
                state.update(loss_sum=0.0, acc_sum=0.0, count=0)
            out_of_time = max_seconds is not None and time.perf_counter() - t_start >= max_seconds
            final = it == iterations or out_of_time
            if it % tr["val_every"] == 0 or final:
                state["seconds"] = time.perf_counter() - t_start
                if final:  # training is over: keep it even if the final validation is killed
                    checkpoint.save(run_dir / LAST, snapshot())
                    hooks.emit("final_validation_start", it)
                validate(it)
            progress.update(bar, completed=it)
            hooks.emit("iteration_end", it)
            if out_of_time:
                out.info(f"Time budget of {tr['max_minutes']} min reached at iteration {it}.")
                break
        if state["val_iteration"] != state["iteration"] or iterations == 0:
            # resumed after a kill during the final validation (or nothing to train): validate now
            validate(state["iteration"])
    seconds = time.perf_counter() - t_start

    summary = summary_base(cfg)
    summary["data"] = data_report.to_dict()
    summary["train"] = {"iterations": state["iteration"], "seconds": round(seconds, 2),
                        "planned_iterations": iterations}
    summary["val"] = {"best_acc": state["best_acc"], "best_iteration": state["best_iteration"]}
    if untrained is not None:
        summary["untrained"] = untrained
    if cfg["test"]:
        best = checkpoint.load(run_dir / BEST, map_location=device)
        checkpoint.load_weights(algo, best["model"], run_dir / BEST)
        t0 = time.perf_counter()
        res = test_split(comp, cfg)
        summary["test"] = {**res, "seconds": round(time.perf_counter() - t0, 2),
                           # without a validation split (trainval) the best checkpoint is the last one
                           "checkpoint": "best" if has_val else "last", "iteration": best["iteration"]}
    write_json(run_dir / SUMMARY, summary)
    return summary
