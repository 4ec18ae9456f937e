#!/usr/bin/env python
"""Issue 30's trainings and tests, one after the other, with the exact commands; results table.

    python scripts/run_fidelity.py all --data-dir ../shared/data --out outputs/fidelity
(with the project installed in the Python that runs it, or PYTHONPATH=src)
    python scripts/run_fidelity.py lake maml tiny ...            # some goals only
    python scripts/run_fidelity.py lake --seeds 3                 # the Lake presets' six-model hour
    python scripts/run_fidelity.py ablate-lake --minutes 10 --background images_background_small1
    python scripts/run_fidelity.py ablate-lake --minutes 10 --rows full,koch,feat
    python scripts/run_fidelity.py ablate-maml --minutes 14 --budget 0.1 --extra runtime.compile=false
    python scripts/run_fidelity.py ablate-maml --minutes 60 --rows no_cosine,no_da   # some rows only
    python scripts/run_fidelity.py all --dry-run                  # print the commands only

Goals (each trains within 60 minutes on the 2-core CPU):
  lake: experiment=lake2015_{background,small1,small2} (ProtoNet, 10 minutes each) and FEAT on
        each preset's recipe (10 minutes), then `metafsl test protocol=lake20` on each run and on
        the two as one ensemble (--lake-runs: the official all_runs.zip; default: the stand-in,
        built first by scripts/make_lake_standin.py), without and with test-time augmentation
        (eval.tta=5), each also with rotation views (eval.tta_rotations=4); --seeds N trains the
        pair N times (seeds 0..N-1) and tests the 2N models as one ensemble (N=3: the hour);
  maml: experiment=maml_omniglot_cpu_{5w1s,20w1s} (each tests itself on 600 episodes);
  tiny: experiment=tiny_fewshot_cpu_pretrain_conv4 (stage 1, 25 min), then
        tiny_fewshot_cpu_{5w5s,5w1s} from it (35 min each), each tested again with eval.tta=10.
ablate-lake: the Lake levers one at a time against the preset of --background ("full";
  images_background: lake2015_background, images_background_small1/2: lake2015_small1/2), each
  trained --minutes (a row that sets what the preset has already is skipped), all tested with
  protocol=lake20 with and without eval.tta=5 (no_within_alphabet also validates on
  mixed-alphabet episodes: episode.within_alphabet steers both), and FEAT, the Siamese net and
  TADAM trained on the recipe's episodes in ProtoNet's place; then the preset's two seeds as an
  ensemble (protocol.ensemble=). Each lake20 row's error has its 95% interval over the 20 runs,
  and its difference from the full row's, run by run (vs_full).
ablate-maml: MAML++'s options one at a time off (and all off), and per-step batch-norm weights
  and biases on (per_step_bn, off in the presets), preset --maml, each trained --minutes with
  --budget of its iterations and schedules; the same 600 test episodes.
--rows picks some of an ablation's rows (names as above, comma-separated; default all): an
  hour-long ablation can be run a few rows at a time.

Every command is printed and appended to <out>/commands.txt; a run dir that already has a
summary.json is not trained again (rerun the same command after an interruption). The table
(markdown) is printed and written to <out>/results.md, the records to <out>/results.json.
--extra passes overrides to every training (e.g. a smoke test: trainer.iterations=2).
"""
from __future__ import annotations

import argparse
import functools
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
LAKE = ["lake2015_background", "lake2015_small1", "lake2015_small2"]
#: ablate-lake --background -> the preset whose recipe its rows change
LAKE_PRESET = dict(zip(["images_background", "images_background_small1", "images_background_small2"], LAKE))
MAML = ["maml_omniglot_cpu_5w1s", "maml_omniglot_cpu_20w1s"]
TINY = ["tiny_fewshot_cpu_5w5s", "tiny_fewshot_cpu_5w1s"]
#: the second model of each Lake preset's ensemble: FEAT on the preset's own episodes and images
#: (temperatures of 1, as zoo_omniglot_feat: a backbone trained from scratch)
LAKE_MEMBER = ["algo=feat", "algo.temperature=1", "algo.temperature2=1"]
#: name -> overrides of a Lake preset (28x28, within-alphabet episodes of 40 characters; no
#: augmentation on the full set, Koch's on the minimal sets) with one lever changed, or another
#: method on its episodes.
#: (Until 2026-12-07 the preset was 56x56 with koch_stroke and the rows took levers away from it:
#: `git show 6288dbe:scripts/run_fidelity.py` for the rows the earlier ablations name.)
LAKE_ABLATIONS = {
    "full": [],
    "no_within_alphabet": ["episode.within_alphabet=false"],
    "res56": ["dataset.image_size=56"],
    "no_augment": ["dataset.augment=none"],
    "koch": ["dataset.augment=koch"],  # Koch et al.'s affine distortions
    "koch_stroke": ["dataset.augment=koch_stroke"],  # and the stroke-width jitter (scaled to the side)
    "stroke": ["dataset.augment=stroke"],
    "wide128": ["backbone.hidden=128"],
    "way20": ["episode.train.n_way=20"],  # training episodes of the test's 20 ways, not 40
    "seed1": ["seed=1"],  # the preset again: a second model for the ensemble below
    # task-conditioned or learned-metric methods in ProtoNet's place
    "feat": LAKE_MEMBER,
    "siamese": ["algo=siamese"],
    "tadam": ["algo=tadam"],
}
#: rows whose method has no embedding of its own to average over views (no eval.tta)
LAKE_NO_TTA = {"tadam"}

#: name -> overrides of the MAML recipe with one MAML++ option off (or, per_step_bn, on)
MAML_ABLATIONS = {
    "full": [],
    "no_lslr": ["algo.per_step_lr=false"],
    "no_msl": ["algo.multi_step_loss=false"],
    "no_da": ["algo.first_order_until=0"],
    "no_cosine": ["trainer.scheduler=null"],
    # an 'on' row: the presets leave MAML++'s per-step batch-norm weights and biases (BNWB) off
    "per_step_bn": ["algo.per_step_bn=true"],
    "plain_maml": ["algo.per_step_lr=false", "algo.multi_step_loss=false", "algo.first_order_until=0",
                   "trainer.scheduler=null"],
}


class Runner:
    def __init__(self, args):
        self.args, self.out = args, Path(args.out).resolve()
        self.records: List[Dict] = []
        self.metafsl = [sys.executable, "-m", "metafsl.cli"]

    def call(self, argv: List[str]) -> int:
        line = " ".join(shlex.quote(a) for a in ["metafsl", *argv])
        print(f"$ {line}", flush=True)
        if self.args.dry_run:
            return 0
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "commands.txt", "a") as f:
            f.write(line + "\n")
        return subprocess.call([*self.metafsl, *argv])

    def train(self, label: str, experiment: str, extra: List[str] = ()) -> Optional[Path]:
        run = self.out / label
        if (run / "summary.json").is_file():
            print(f"{run}: trained already, skipped.")
            return run
        argv = ["train", f"experiment={experiment}", f"paths.data_dir={self.args.data_dir}", *extra,
                *self.args.extra, f"hydra.run.dir={run}"]
        if (run / "checkpoints" / "last.pt").is_file():
            argv.append("resume=true")
        return run if self.call(argv) == 0 or self.args.dry_run else None

    def test(self, run: Path, extra: List[str]) -> Optional[Dict]:
        if self.call(["test", f"run={run}", f"paths.data_dir={self.args.data_dir}", *extra]) or self.args.dry_run:
            return None
        return json.loads((run / "summary.json").read_text())["tests"][-1]

    def record(self, label: str, run: Optional[Path], test: str, result: Optional[Dict]) -> None:
        rec = {"row": label, "run": str(run), "test": test}
        summary = _summary(run)
        if summary:
            rec.update(iterations=summary.get("train", {}).get("iterations"),
                       minutes=round((summary.get("train", {}).get("seconds") or 0) / 60, 1))
        result = result if result is not None else (summary or {}).get("test")
        if result:
            rec.update({k: result[k] for k in ("acc", "ci95", "error", "episodes", "trials", "tta", "tta_rotations",
                                               "per_run_error")
                        if k in result})
        self.records.append(rec)


def _summary(run: Optional[Path]) -> Optional[Dict]:
    path = None if run is None else run / "summary.json"
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def lake_root(r: Runner) -> str:
    if r.args.lake_runs:
        return r.args.lake_runs
    standin = r.out / "all_runs_standin.zip"
    if not standin.is_file():
        cmd = [sys.executable, str(ROOT / "scripts" / "make_lake_standin.py"), "--omniglot",
               str(Path(r.args.data_dir) / "omniglot"), "--out", str(standin)]
        print("$ " + " ".join(cmd), flush=True)
        if not r.args.dry_run:
            standin.parent.mkdir(parents=True, exist_ok=True)
            subprocess.check_call(cmd)
    return str(standin)


def lake_tests(r: Runner, label: str, run: Optional[Path], root: str, ttas=(1, 5),
               ensemble: Optional[List[Optional[Path]]] = None, rotations=(1, 4)) -> None:
    """lake20 tests of ``run`` at each ``eval.tta`` and each ``eval.tta_rotations``; with
    ``ensemble``, of ``run`` voting with those runs (none is tested when any of them is missing)."""
    extra, test = [], "lake20"
    if ensemble is not None:
        run = run if all(ensemble) else None
        extra, test = [f"protocol.ensemble=[{','.join(map(str, ensemble))}]"], f"lake20 ensemble of {len(ensemble) + 1}"
    for turns in rotations:
        for tta in ttas:
            res = r.test(run, ["protocol=lake20", f"protocol.root={root}", f"eval.tta={tta}",
                               f"eval.tta_rotations={turns}", *extra]) if run else None
            r.record(label, run, f"{test}, tta={tta}" + (f", {turns} rotations" if turns > 1 else ""), res)


def goal_lake(r: Runner) -> None:
    """Each preset's run (ProtoNet), its FEAT member (the same recipe, ``LAKE_MEMBER``), each
    tested alone, then the two as one ensemble: the presets' lowest measured errors. With
    ``--seeds N`` (N > 1), the pair is trained again with ``seed=1`` ... ``seed=N-1`` (10 minutes
    per model: N = 3 is the issue's hour) and all 2N models are tested as one ensemble."""
    root = lake_root(r)
    for name in LAKE:
        run = r.train(name, name)
        lake_tests(r, name, run, root)
        member = r.train(f"{name}_feat", name, LAKE_MEMBER)
        lake_tests(r, f"{name}_feat", member, root)
        lake_tests(r, f"{name}+feat", run, root, ensemble=[member])
        if r.args.seeds > 1:
            more = [r.train(f"{name}{kind}_seed{s}", name, [*extra, f"seed={s}"])
                    for s in range(1, r.args.seeds) for kind, extra in (("", []), ("_feat", LAKE_MEMBER))]
            lake_tests(r, f"{name}+feat_{r.args.seeds}seeds", run, root, ensemble=[member, *more])


def goal_maml(r: Runner) -> None:
    for name in MAML:
        r.record(name, r.train(name, name), "episodes", None)


def goal_tiny(r: Runner) -> None:
    pre = r.train("tiny_pretrain", "tiny_fewshot_cpu_pretrain_conv4")
    r.record("tiny_pretrain", pre, "episodes", None)
    for name in TINY:
        run = r.train(name, name, [f"backbone.weights={pre}"]) if pre else None
        r.record(name, run, "episodes", None)
        r.record(name, run, "episodes, tta=10", r.test(run, ["eval.tta=10"]) if run else None)


#: goal -> its ablation's rows (what --rows may name)
ABLATIONS = {"ablate-lake": LAKE_ABLATIONS, "ablate-maml": MAML_ABLATIONS}


def chosen(r: Runner, rows: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """The ablation's rows that --rows names (all without it), in the table's order."""
    return rows if r.args.rows is None else {k: v for k, v in rows.items() if k in r.args.rows}


def ablate_lake(r: Runner) -> None:
    """Each row against the preset of ``--background`` (``LAKE_PRESET``); a row that sets only what
    the preset already has (``no_augment`` on the full set, ``koch`` on the minimal sets) is the
    preset itself and is skipped."""
    root = lake_root(r)
    preset = LAKE_PRESET[r.args.background]
    budget = [f"trainer.max_minutes={r.args.minutes}"]
    runs = {}
    for name, overrides in chosen(r, LAKE_ABLATIONS).items():
        if name != "full" and preset_has(preset, overrides):
            print(f"{name}: {preset} has {' '.join(overrides)} already (the full row); skipped.")
            continue
        label = f"ablate_{r.args.background}_{r.args.minutes:g}min_{name}"
        runs[name] = r.train(label, preset, [*budget, *overrides])
        lake_tests(r, label, runs[name], root, (1,) if name in LAKE_NO_TTA else (1, 5), rotations=(1,))
    if runs.get("full") and runs.get("seed1"):  # ensemble of the two full-recipe models (seeds 0 and 1)
        lake_tests(r, f"{runs['full'].name}+seed1", runs["full"], root, ensemble=[runs["seed1"]], rotations=(1,))
    if runs.get("full"):
        against_full(r.records, str(runs["full"]))


@functools.lru_cache(maxsize=None)
def _composed(preset: str, overrides: Tuple[str, ...] = ()) -> Dict:
    from metafsl.api import compose, resolved

    return resolved(compose("train", [f"experiment={preset}", *overrides]), check=False)


def preset_has(preset: str, overrides: List[str]) -> bool:
    """Whether ``overrides`` leave the preset's composed config as it is (a row of nothing)."""
    return _composed(preset, tuple(overrides)) == _composed(preset)


def against_full(records: List[Dict], full: str) -> None:
    """Each lake20 record's error minus the full recipe's (same tta), run by run: 'vs_full'."""
    from metafsl.engine.protocols import paired_difference

    base = {rec["test"]: rec["per_run_error"] for rec in records if rec["run"] == full and "per_run_error" in rec}
    for rec in records:
        if rec["run"] != full and rec.get("test") in base and "per_run_error" in rec:
            d = paired_difference(base[rec["test"]], rec["per_run_error"])
            rec["vs_full"] = f"{d['difference']:+.2f} ± {d['ci95']:.2f}"


def ablate_maml(r: Runner) -> None:
    """Each MAML++ option off in turn, ``--minutes`` of training and ``--budget`` of the preset's
    iterations and schedules each (the same 600 test episodes). Every row is planned by the clock
    (``trainer.fit_to_budget``), and ``budget=`` scales a clock-planned run's minutes too, so the
    minutes are passed divided by the budget: each row trains ``--minutes``, whatever each option
    costs per iteration."""
    minutes = r.args.minutes / r.args.budget
    for name, overrides in chosen(r, MAML_ABLATIONS).items():
        label = f"ablate_{r.args.maml}_{r.args.minutes:g}min_{name}"
        extra = ["trainer.fit_to_budget=true", f"trainer.max_minutes={minutes:g}", f"budget={r.args.budget}",
                 *overrides]
        r.record(label, r.train(label, r.args.maml, extra), "episodes", None)


def table(records: List[Dict]) -> str:
    cols = ["row", "test", "acc", "ci95", "episodes", "error", "trials", "vs_full", "iterations", "minutes", "run"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in records:
        cells = [rec.get(c) for c in cols]
        lines.append("| " + " | ".join("" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
                                      for v in cells) + " |")
    return "\n".join(lines)


def parse_rows(p: argparse.ArgumentParser, text: str, goals: List[str]) -> List[str]:
    """--rows as a list; a name that is no row of the ablations among ``goals`` is refused."""
    rows = [row.strip() for row in text.split(",") if row.strip()]
    known = {g: ABLATIONS[g] for g in goals if g in ABLATIONS}
    unknown = [row for row in rows if not any(row in table for table in known.values())]
    if unknown or not known:
        listed = "; ".join(f"{g}: {', '.join(table)}" for g, table in known.items()) or "none"
        p.error(f"--rows: no row named {', '.join(unknown or rows)} in the ablations asked for ({listed})")
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("goals", nargs="+", choices=["all", "lake", "maml", "tiny", "ablate-lake", "ablate-maml"])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default="outputs/fidelity")
    p.add_argument("--lake-runs", default=None, help="all_runs.zip (default: the stand-in, built in --out)")
    p.add_argument("--minutes", type=float, default=10.0, help="ablate-lake: training minutes per variant")
    p.add_argument("--background", default="images_background", choices=sorted(LAKE_PRESET),
                   help="ablate-lake: the background set (its preset is the full row)")
    p.add_argument("--maml", default="maml_omniglot_cpu_5w1s", help="ablate-maml: the preset")
    p.add_argument("--budget", type=float, default=1.0,
                   help="ablate-maml: fraction of the preset's iterations and schedules (e.g. --minutes 20 --budget 0.33)")
    p.add_argument("--seeds", type=int, default=1,
                   help="lake: also train the ProtoNet + FEAT pair with seeds 1..N-1 and test all 2N models as one ensemble")
    p.add_argument("--rows", default=None, help="ablate-*: the rows to run, comma-separated (default: all)")
    p.add_argument("--extra", nargs="*", default=[], help="overrides for every training")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    args.data_dir = str(Path(args.data_dir).resolve())
    goals = [g for goal in args.goals for g in (["lake", "maml", "tiny"] if goal == "all" else [goal])]
    if args.rows is not None:
        args.rows = parse_rows(p, args.rows, goals)
    if args.seeds < 1:
        p.error(f"--seeds: {args.seeds} is not a number of seeds (1 or more)")
    if args.seeds > 1 and "lake" not in goals:
        p.error("--seeds: only the lake goal trains more seeds (ask for lake, or all)")
    r = Runner(args)
    steps = {"lake": goal_lake, "maml": goal_maml, "tiny": goal_tiny, "ablate-lake": ablate_lake,
             "ablate-maml": ablate_maml}
    for goal in goals:
        steps[goal](r)
    if args.dry_run:
        return 0
    text = table(r.records)
    print(text)
    r.out.mkdir(parents=True, exist_ok=True)
    (r.out / "results.md").write_text(text + "\n")
    (r.out / "results.json").write_text(json.dumps(r.records, indent=1) + "\n")
    return 0 if all("acc" in rec for rec in r.records) else 1


if __name__ == "__main__":
    sys.exit(main())
