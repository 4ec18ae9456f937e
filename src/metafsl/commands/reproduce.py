"""`metafsl reproduce table=<name>`: run a published table's rows and compare them with the paper."""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from metafsl.arguments import last_value, parse
from metafsl.commands.base import Command
from metafsl.conf import CONF_DIR, group_options
from metafsl.engine.run_dir import LAST, SUMMARY, read_json, write_json, write_text
from metafsl.engine.summary import INFERENCE_KEYS, RunSummary, inference_label
from metafsl.errors import UserError

TABLE_DIR = CONF_DIR / "table"
MANIFEST = "reproduce.json"
#: overrides that do not change what a row computes (where data lives, which device)
NEUTRAL_KEYS = ("paths.", "device", "verbose", "resume", "hydra.")
OWN_KEYS = ("table", "budget", "out", "rows", "run")


@dataclass
class TableRow:
    # The preset the row trains (none in a table of tests of a given run).
    experiment: Optional[str] = None
    # Name of the row's run dir and of the row in the table (default: the experiment name).
    label: Optional[str] = None
    # Train overrides for this row only, applied after the preset.
    overrides: List[str] = field(default_factory=list)


@dataclass
class TableSpec:
    title: str
    rows: List[TableRow]
    description: str = ""
    # Train overrides for every row, applied after the preset and before the row's own.
    overrides: List[str] = field(default_factory=list)
    # A table of tests of one trained run (``run=<run dir>``): each row is ``metafsl test`` with
    # the table's and the row's overrides (e.g. a cross-domain test), nothing is trained.
    test_of_run: bool = False


def table_names() -> List[str]:
    return sorted(p.stem for p in TABLE_DIR.glob("*.yaml"))


def load_table(name: str) -> TableSpec:
    """A shipped table by name, or a table file (``metafsl cp table=<name> <file.yaml>``)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else TABLE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"Unknown table '{name}'; choose one of: {', '.join(table_names())}, "
                        "or give a table file (metafsl cp table=<name> <file.yaml>).")
    raw = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(raw, dict):
        raise UserError(f"Table {path} must be a mapping with a title and rows.")
    raw["rows"] = [{"experiment": r} if isinstance(r, str) else r for r in raw.get("rows") or []]
    try:
        spec: TableSpec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TableSpec), raw))
    except Exception as exc:
        raise UserError(f"Table {path} is malformed: {str(exc).splitlines()[0]}") from None
    if not spec.rows:
        raise UserError(f"Table {path} has no rows.")
    known = set(group_options("experiment"))
    for row in spec.rows:
        if spec.test_of_run:
            if not row.label:
                raise UserError(f"Table '{name}' tests a run: give each row a label.")
        elif row.experiment not in known:
            raise UserError(f"Table '{name}' names experiment '{row.experiment}', which has no preset "
                            f"in conf/experiment/.")
        row.label = row.label or str(row.experiment)
        row.overrides = [*spec.overrides, *row.overrides]
    labels = [r.label for r in spec.rows]
    if len(set(labels)) != len(labels):
        raise UserError(f"Table '{name}' has two rows with the same label; give them distinct labels.")
    return spec


# ----------------------------------------------------------------------------- arguments
def parse_args(args: List[str]) -> Tuple[Dict[str, str], List[str]]:
    own, rest = parse(args, OWN_KEYS, "reproduce")
    if not own.get("table"):
        raise UserError(f"metafsl reproduce needs a table: metafsl reproduce table=<name> "
                        f"(one of: {', '.join(table_names())}).")
    return own, rest


def parse_budget(text: Optional[str]) -> float:
    if text is None:
        return 1.0
    try:
        budget = float(text)
    except ValueError:
        raise UserError(f"budget must be a number such as 0.1 (got '{text}').") from None
    if not budget > 0:
        raise UserError(f"budget must be a positive fraction of the presets' iterations (got {text}).")
    return budget


def output_root(overrides: List[str]) -> Path:
    return Path(last_value(overrides, "paths.output_dir") or os.environ.get("METAFSL_OUTPUT_DIR", "outputs"))


def result_changing_overrides(overrides: List[str]) -> List[str]:
    """The overrides that change results (not paths, device, verbosity ...)."""
    return [o for o in overrides if not o.lstrip("+~").startswith(NEUTRAL_KEYS)]


def check_manifest(table_dir: Path, name: str, budget: float, overrides: List[str]) -> None:
    """Refuse to mix rows computed under different settings in one table dir."""
    path = table_dir / MANIFEST
    mine = {"table": name, "budget": budget, "overrides": result_changing_overrides(overrides)}
    if path.exists():
        old = _read_manifest(path, table_dir)
        if (old.get("table"), old.get("budget"), old.get("overrides")) != (name, budget, mine["overrides"]):
            raise UserError(
                f"{table_dir} holds a reproduction of '{old.get('table')}' with budget={old.get('budget')} "
                f"and overrides {old.get('overrides') or '[]'}; use the same settings to resume it, or "
                f"out=<another dir>.")
    table_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, mine)


def _read_manifest(path: Path, table_dir: Path) -> Dict[str, Any]:
    try:
        old = read_json(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        old = exc
    if not isinstance(old, dict):
        why = f"unreadable or corrupt ({old.__class__.__name__})" if isinstance(old, Exception) else "not a mapping"
        raise UserError(f"{path} is {why}, so the settings the rows in {table_dir} were computed with are "
                        f"unknown; delete it to continue them with these settings, or pass out=<another dir>.")
    return old


# ----------------------------------------------------------------------------- shared training
#: top-level keys that only say how a trained model is tested or labelled
TEST_ONLY_KEYS = ("name", "published", "eval", "test")


def row_config(row: TableRow, budget: float, overrides: List[str]) -> Optional[Dict[str, Any]]:
    """The row's composed train config, unresolved (None if it does not compose: the train run
    then reports the problem itself)."""
    from hydra import compose, initialize_config_module

    from metafsl.api import register_resolvers

    register_resolvers()
    argv = [f"experiment={row.experiment}", *row.overrides, *overrides, f"budget={budget}"]
    argv = [a for a in argv if not a.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_module(config_module="metafsl.conf", version_base=None):
            cfg = compose(config_name="train", overrides=argv)
        return OmegaConf.to_container(cfg, resolve=False)
    except Exception:
        return None


def training_key(cfg: Dict[str, Any]) -> str:
    """What determines the trained weights: the config without its test-only parts."""
    key = {k: v for k, v in cfg.items() if k not in TEST_ONLY_KEYS}
    key["episode"] = {k: v for k, v in (cfg.get("episode") or {}).items() if k not in ("test", "name")}
    return json.dumps(key, sort_keys=True, default=str)


def trainers(rows: List[TableRow], configs: List[Optional[Dict[str, Any]]]) -> Dict[str, str]:
    """Map each row label to the label of the row that trains its model (itself if it trains)."""
    first: Dict[str, str] = {}
    owner = {}
    for row, cfg in zip(rows, configs):
        if cfg is None:
            owner[row.label] = row.label
            continue
        owner[row.label] = first.setdefault(training_key(cfg), row.label)
    return owner


def test_row(row_dir: Path, source_dir: Path, source: str, cfg: Dict[str, Any], overrides: List[str]) -> int:
    """Evaluate the model trained in ``source_dir`` with this row's test episodes and eval settings,
    then write the row's own summary.json (so the row reads and resumes like a trained one)."""
    from metafsl import api
    from metafsl.reporting.run_report import ConsoleReport

    test_spec = cfg["episode"]["test"]
    argv = [*[f"episode.test.{k}={v}" for k, v in test_spec.items()],
            *[f"eval.{k}={v}" for k, v in cfg["eval"].items() if not isinstance(v, (dict, list))],
            *[f"eval.{rule}.{k}={v}" for rule in [cfg["eval"].get("transductive")]
              if isinstance(cfg["eval"].get(rule), dict) for k, v in cfg["eval"][rule].items()],
            *[o for o in overrides if o.lstrip("+~").startswith(NEUTRAL_KEYS) and not o.startswith("hydra")]]
    try:
        record = api.evaluate(source_dir, argv, out_dir=row_dir, overwrite=True,
                              callbacks=[ConsoleReport()]).tests[-1]
    except UserError as exc:
        from metafsl.reporting.console import error

        error(str(exc))
        return 2
    summary = RunSummary.read(source_dir)
    summary.tests = []
    summary.name, summary.published, summary.trained_by = cfg.get("name") or "", cfg.get("published") or {}, source
    summary.episode = {**summary.episode, "test": dict(test_spec)}
    summary.test = {k: record[k] for k in ("acc", "ci95", "episodes", "seconds", "checkpoint", "iteration",
                                           *INFERENCE_KEYS) if k in record}
    summary.write(row_dir)
    return 0


# ----------------------------------------------------------------------------- running
def row_state(row_dir: Path) -> str:
    """done (its summary.json reads), interrupted (it has checkpoints/last.pt) or new.  A
    summary.json that does not read (cut short, edited) is kept aside as summary.json.unreadable,
    with a warning, and the row is redone: resumed from its last.pt, or trained or tested again."""
    path = row_dir / SUMMARY
    if path.is_file():
        try:
            RunSummary.read(row_dir)
            return "done"
        except UserError as exc:
            from metafsl.reporting import console

            aside = path.with_name(f"{SUMMARY}.unreadable")
            os.replace(path, aside)
            console.console.print(f"warning: {str(exc).rstrip('.')}; kept as {aside.name}, the row is redone.",
                                  style="yellow", highlight=False, markup=False, soft_wrap=True)
    if (row_dir / LAST).is_file():
        return "interrupted"
    return "new"


def run_row(row: TableRow, row_dir: Path, budget: float, overrides: List[str]) -> int:
    """Train (or resume) one row in its run dir; a problem is reported and gives exit code 2."""
    from metafsl import api
    from metafsl.errors import exit_code
    from metafsl.reporting.console import error
    from metafsl.reporting.run_report import ConsoleReport

    argv = [f"experiment={row.experiment}", *row.overrides, *overrides, f"budget={budget}"]
    if row_state(row_dir) == "interrupted":
        argv.append("resume=true")
    try:
        api.train(api.compose("train", argv), row_dir, overrides=argv, callbacks=[ConsoleReport()])
    except UserError as exc:
        error(str(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        error("Interrupted; rerun the same command to resume this row.")
        return 130
    return 0


def row_summary(row_dir: Path) -> Optional[Dict[str, Any]]:
    """The row's summary.json as a dict; None (with a warning when it is unreadable) otherwise."""
    from metafsl.reporting import console

    try:
        summary = RunSummary.read_or_none(row_dir)
    except UserError as exc:
        console.info(f"[yellow]warning:[/] {exc}")
        return None
    return None if summary is None else summary.to_dict()


def fmt(x: Optional[float], ci: Optional[float] = None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if ci is None else f"{x:.2f} ± {ci:.2f}"


def compare(label: str, experiment: str, summary: Optional[Dict[str, Any]], row_dir: Path) -> Dict[str, Any]:
    """One line of the comparison table from a row's summary.json (None: the row failed)."""
    s = summary or {}
    pub = s.get("published") or {}
    test = s.get("test") or {}
    ep = (s.get("episode") or {}).get("test") or {}
    acc, ci = test.get("acc"), test.get("ci95")
    p_acc, p_ci = pub.get("acc"), pub.get("ci95")
    diff = None if acc is None or p_acc is None else acc - p_acc
    inside = None if diff is None else abs(diff) <= (ci or 0.0)
    return {"row": label, "experiment": experiment, "algo": s.get("algo"),
            "dataset": test.get("dataset") or s.get("dataset"),
            "way": ep.get("n_way"), "shot": ep.get("n_shot"), "our_acc": acc, "our_ci95": ci,
            "published_acc": p_acc, "published_ci95": p_ci, "diff": diff, "published_in_ci": inside,
            "iterations": (s.get("train") or {}).get("iterations"),
            "train_seconds": (s.get("train") or {}).get("seconds"), "budget": s.get("budget", 1.0),
            "citation": pub.get("citation"), "run_dir": str(row_dir), "failed": summary is None,
            "trained_by": s.get("trained_by"), "inference": inference_label(test)}


CSV_COLUMNS = ["row", "experiment", "algo", "dataset", "way", "shot", "inference", "our_acc", "our_ci95", "published_acc",
               "published_ci95", "diff", "published_in_ci", "iterations", "train_seconds", "budget",
               "approximate", "trained_by", "citation", "run_dir"]
SHOWN = ["row", "episode", "inference", "ours (%)", "published (%)", "diff", "in CI", "iters", "time"]


def table_cells(r: Dict[str, Any]) -> List[str]:
    inside = "-" if r["published_in_ci"] is None else ("yes" if r["published_in_ci"] else "no")
    if r["failed"]:
        inside = "row failed"
    episode = "-" if r["way"] is None else f"{r['way']}-way {r['shot']}-shot"
    diff = "-" if r["diff"] is None else f"{r['diff']:+.2f}"
    secs = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f} s"
    if r.get("trained_by"):
        secs = f"model of {r['trained_by']}"
    return [r["row"], episode, r.get("inference") or "inductive", fmt(r["our_acc"], r["our_ci95"]), fmt(r["published_acc"], r["published_ci95"]),
            diff, inside, "-" if r["iterations"] is None else str(r["iterations"]), secs]


def approximate_note(budget: float) -> str:
    return (f"APPROXIMATE: budget={budget:g} ran {budget:.0%} of each preset's iterations; these numbers "
            f"are a quick check, not a reproduction of the published ones.")


def write_outputs(table_dir: Path, spec: TableSpec, rows: List[Dict[str, Any]], budget: float) -> None:
    """table.csv and table.md, each written atomically."""
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        rec = {k: r.get(k) for k in CSV_COLUMNS}
        rec["approximate"] = budget != 1.0
        for k in ("our_acc", "our_ci95", "diff", "published_acc", "published_ci95"):
            rec[k] = "" if rec[k] is None else round(rec[k], 4)
        rec["published_in_ci"] = "" if rec["published_in_ci"] is None else rec["published_in_ci"]
        w.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    write_text(table_dir / "table.csv", f.getvalue(), what=f"{table_dir / 'table.csv'}")
    lines = [f"# {spec.title}", ""]
    if budget != 1.0:
        lines += [f"**{approximate_note(budget)}**", ""]
    lines += ["Test accuracy in %, mean ± 95% confidence interval over test episodes. "
              "'in CI': whether the published mean lies within our 95% interval.", ""]
    lines.append("| " + " | ".join(SHOWN) + " |")
    lines.append("|" + "|".join("---" for _ in SHOWN) + "|")
    for r in rows:
        lines.append("| " + " | ".join(table_cells(r)) + " |")
    lines += ["", "Sources:", ""]
    for r in rows:
        lines.append(f"- {r['row']}: {r['citation'] or 'no published number'} (run: `{r['run_dir']}`)")
    write_text(table_dir / "table.md", "\n".join(lines) + "\n", what=f"{table_dir / 'table.md'}")


def select_rows(spec: TableSpec, name: str, wanted: Optional[str]) -> None:
    """``rows=a,b``: keep only those rows of the table (in place)."""
    if not wanted:
        return
    labels = wanted.split(",")
    unknown = [w for w in labels if w not in {r.label for r in spec.rows}]
    if unknown:
        raise UserError(f"Table '{name}' has no row '{unknown[0]}'; its rows are: "
                        f"{', '.join(r.label for r in spec.rows)}.")
    spec.rows = [r for r in spec.rows if r.label in labels]


def test_of_run_row(row: TableRow, row_dir: Path, run: Path, overrides: List[str]) -> int:
    """A row of a table of tests: ``metafsl test run=<run> <row overrides>`` into the row's dir,
    whose summary.json then holds that test as its own (so the row reads like a trained one)."""
    from metafsl import api
    from metafsl.reporting.console import error
    from metafsl.reporting.run_report import ConsoleReport

    given = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]  # e.g. eval.finetune_steps=5
    try:
        summary = api.evaluate(run, [*row.overrides, *given], out_dir=row_dir, overwrite=True,
                               callbacks=[ConsoleReport()])
    except UserError as exc:
        error(str(exc))
        return 2
    record = summary.tests[-1]
    summary.tests, summary.trained_by, summary.published = [], str(run), {}
    summary.episode = {**summary.episode, "test": dict(record.get("episode") or {})}
    summary.test = {k: v for k, v in record.items() if k != "overrides"}
    summary.write(row_dir)
    return 0


def run_test_rows(spec: TableSpec, table_dir: Path, run: Path, overrides: List[str]):
    """Each row of a table of tests of ``run``: done rows are skipped."""
    from metafsl.reporting import console

    code, results, n = 0, [], len(spec.rows)
    for i, row in enumerate(spec.rows, 1):
        row_dir = table_dir / row.label
        if row_state(row_dir) == "done":
            console.info(f"[{i}/{n}] {row.label}: done, skipped ({row_dir / SUMMARY}).")
        else:
            console.info(f"[{i}/{n}] {row.label}: testing {run} ({' '.join(row.overrides)}).")
            code = test_of_run_row(row, row_dir, run, overrides) or code
        results.append(compare(row.label, "-", row_summary(row_dir), row_dir))
        code = code or (2 if results[-1]["failed"] else 0)
    return code, results


def run_rows(spec: TableSpec, table_dir: Path, budget: float, overrides: List[str]):
    """Train, resume, test or skip each row; (exit code, comparison rows), or None when interrupted."""
    from metafsl.reporting import console

    configs = [row_config(row, budget, overrides) for row in spec.rows]
    owner = trainers(spec.rows, configs)
    code, results, n = 0, [], len(spec.rows)
    for i, (row, cfg) in enumerate(zip(spec.rows, configs), 1):
        row_dir, source = table_dir / row.label, owner[row.label]
        state = row_state(row_dir)
        if state == "done":
            console.info(f"[{i}/{n}] {row.label}: done, skipped ({row_dir / SUMMARY}).")
        elif source != row.label:
            source_dir = table_dir / source
            if row_state(source_dir) != "done":
                console.info(f"[{i}/{n}] {row.label}: skipped, the model of {source} is not trained.")
                code = code or 1
            else:
                console.info(f"[{i}/{n}] {row.label}: same training as {source}; testing its model.")
                code = code or test_row(row_dir, source_dir, source, cfg, overrides)
        else:
            verb = "resuming" if state == "interrupted" else "training"
            console.info(f"[{i}/{n}] {row.label}: {verb} ({row.experiment}).")
            rc = run_row(row, row_dir, budget, overrides)
            if rc in (130, 143):  # interrupted (user, preemption): stop here; the row resumes next time
                console.info("Reproduction interrupted; rerun the same command to resume it.")
                return rc, None
            code = rc or code
        results.append(compare(row.label, row.experiment, row_summary(row_dir), row_dir))
        if results[-1]["failed"]:  # never a success with a row that has no result
            code = code or 2
    return code, results


def run(args: List[str]) -> int:
    from metafsl.reporting import console

    own, overrides = parse_args(args)
    name = own["table"]
    spec = load_table(name)
    name = Path(name).stem  # a table file's outputs go under its file name
    budget = parse_budget(own.get("budget"))
    select_rows(spec, name, own.get("rows"))
    suffix = "" if budget == 1.0 else f"_budget{budget:g}"
    table_dir = Path(own["out"]) if own.get("out") else output_root(overrides) / "reproduce" / f"{name}{suffix}"
    run_dir = _table_run(spec, name, own.get("run"))
    check_manifest(table_dir, name, budget, overrides + ([f"run={run_dir}"] if run_dir else []))
    if budget != 1.0:
        console.info(f"[bold yellow]{approximate_note(budget)}[/]")
    console.info(f"[bold]metafsl reproduce[/] {spec.title}: {len(spec.rows)} rows  →  {table_dir}")
    code, results = run_test_rows(spec, table_dir, run_dir, overrides) if run_dir else \
        run_rows(spec, table_dir, budget, overrides)
    if results is None:
        return code
    title = spec.title + (f"  [APPROXIMATE, budget={budget:g}]" if budget != 1.0 else "")
    console.table(title, SHOWN, [table_cells(r) for r in results], justify_right=SHOWN[2:])
    write_outputs(table_dir, spec, results, budget)  # after the table is shown: a failed write loses nothing
    if budget != 1.0:
        console.info(f"[bold yellow]{approximate_note(budget)}[/]")
    console.info(f"Wrote {table_dir / 'table.md'} and {table_dir / 'table.csv'}.")
    if code:
        failed = [r["row"] for r in results if r["failed"]]
        raise UserError(f"Row(s) {', '.join(failed)} failed (see the messages above); rerun the same "
                        f"command to retry them." if failed else "A row reported an error; see above.")
    return 0


def _table_run(spec: TableSpec, name: str, run: Optional[str]) -> Optional[Path]:
    """The run a table of tests tests (``run=``), checked; None for a table that trains."""
    if not spec.test_of_run:
        if run:
            raise UserError(f"Table '{name}' trains its own models; run= is for a table of tests of a run.")
        return None
    if not run:
        raise UserError(f"Table '{name}' tests a trained run: metafsl reproduce table={name} run=<run dir>.")
    if not Path(run).is_dir():
        raise UserError(f"Run dir {run} does not exist.")
    return Path(run)


COMMAND = Command(
    name="reproduce",
    summary="run a published table's rows and compare: metafsl reproduce table=<name> [budget=0.1]",
    usage="metafsl reproduce table=<name> [run=<run dir>] [budget=<fraction>] [out=<dir>] [rows=a,b] "
          "[train overrides]",
    description="""
A driver over the `train` app: each row of ``conf/table/<name>.yaml`` (an experiment preset,
optionally with its own overrides) becomes a real train run dir
``<paths.output_dir>/reproduce/<name>[_budget<f>]/<row>/``.  A row with a ``summary.json`` is
done and skipped; a row with ``checkpoints/last.pt`` but no summary was interrupted and
resumes from it.  Rows whose composed configs differ only in how the model is tested (the
test episode, ``eval``, name and published figure) share one trained model, as the papers do
(Snell et al. train one 1-shot model and report it at 5 and 20 ways): the first such row
trains, the others run ``metafsl test`` on its checkpoint in their own dir.  Then ``table.md``
and ``table.csv`` compare, row by row, our test accuracy ± 95% CI with the published one, and
say whether the published mean lies inside our interval.  A table with ``test_of_run: true``
(``table=bscdfsl``) trains nothing: each row tests the run given as ``run=<run dir>`` with its
overrides (another dataset, shots), e.g. a miniImageNet run on the BSCD-FSL targets.""",
    examples=("metafsl reproduce table=snell2017_omniglot paths.data_dir=../shared/data",
              "metafsl reproduce table=zoo_omniglot_5w1s budget=0.1 paths.data_dir=../shared/data",
              "metafsl reproduce table=bscdfsl run=outputs/train/<mini_imagenet run> paths.data_dir=data",
              "metafsl list table"),
    run=run,
    interrupted="Reproduction interrupted; rerun the same command to resume it.",
)
