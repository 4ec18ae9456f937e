"""`metafsl results <dir>...`: one table of many runs (``summary.json`` files)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from metafsl.arguments import parse
from metafsl.commands.base import Command
from metafsl.engine.run_dir import SUMMARY, write_text
from metafsl.engine.summary import RunSummary, inference_label
from metafsl.errors import UserError

COLUMNS = ["run", "algo", "dataset", "backbone", "episode", "inference", "overrides", "val", "test", "ci95", "seconds",
           "iterations", "budget", "test_dataset"]
HEADERS = {"val": "val (%)", "test": "test (%)", "seconds": "time (s)"}
NUMERIC = {"val", "test", "ci95", "seconds", "iterations", "budget"}
OWN_KEYS = ("sort", "format", "out", "plot", "plot_file")


def find_summaries(paths: List[Path]) -> List[Path]:
    found: List[Path] = []
    for p in paths:
        if not p.exists():
            raise UserError(f"{p} does not exist.")
        if p.is_file() and p.name == SUMMARY:
            found.append(p)
        elif (p / SUMMARY).is_file():
            found.append(p / SUMMARY)
        else:
            found.extend(sorted(q for q in p.rglob(SUMMARY) if ".submitit" not in q.parts))
    seen, unique = set(), []
    for f in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def _overrides(run: Path) -> str:
    f = run / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return ""
    return " ".join(o for o in OmegaConf.load(f) if not str(o).startswith(("hydra.", "paths.")))


def rows_of(summary_path: Path) -> List[Dict[str, Any]]:
    """One row for the run's own test, plus one per later `metafsl test` record."""
    run = summary_path.parent
    try:
        s = RunSummary.read(run).to_dict()  # fields of the wrong type are refused there too
    except UserError as exc:  # one unreadable summary must not hide the others
        from metafsl.reporting import console

        # on stderr: the table (or CSV) on stdout stays clean
        console.err_console.print(f"warning: skipped: {exc}", style="yellow", highlight=False, markup=False,
                                  soft_wrap=True)
        return []
    ep = (s.get("episode") or {}).get("test") or {}
    base = {"run": str(run), "algo": s.get("algo"), "dataset": s.get("dataset"), "backbone": s.get("backbone"),
            "overrides": _overrides(run), "val": (s.get("val") or {}).get("best_acc"),
            "seconds": (s.get("train") or {}).get("seconds"),
            "iterations": (s.get("train") or {}).get("iterations"), "budget": s.get("budget", 1.0)}

    def with_test(rec: Optional[Dict[str, Any]], spec: Dict[str, Any], extra: str = "") -> Dict[str, Any]:
        row = dict(base)
        row["way"], row["shot"] = spec.get("n_way"), spec.get("n_shot")
        row["episode"] = f"{row['way']}w{row['shot']}s" if row["way"] else "-"
        row["test"] = (rec or {}).get("acc")
        row["inference"] = inference_label(rec) if rec else "-"
        row["test_dataset"] = (rec or {}).get("dataset") or base["dataset"]
        if row["test_dataset"] != base["dataset"]:  # a cross-domain test: trained on -> tested on
            row["dataset"] = f"{base['dataset']} → {row['test_dataset']}"
        row["ci95"] = (rec or {}).get("ci95")
        if extra:
            row["overrides"] = (row["overrides"] + " | test: " + extra).strip()
        return row

    rows = [with_test(s.get("test"), ep)]
    for rec in s.get("tests") or []:
        if rec.get("acc") is None:
            continue
        spec = rec.get("episode") or ep
        extra = " ".join(rec.get("overrides") or []) or "(rerun)"
        rows.append(with_test(rec, spec, extra))
    return rows


def sort_rows(rows: List[Dict[str, Any]], col: str) -> List[Dict[str, Any]]:
    desc = col.startswith("-") is False and col in NUMERIC
    col = col.lstrip("-")
    if col not in COLUMNS:
        raise UserError(f"Cannot sort by '{col}'; choose one of: {', '.join(COLUMNS)}.")
    present = [r for r in rows if r.get(col) is not None]
    missing = [r for r in rows if r.get(col) is None]
    return sorted(present, key=lambda r: r[col], reverse=desc) + missing


def _cell(row: Dict[str, Any], col: str) -> str:
    v = row.get(col)
    if v is None or v == "":
        return "-" if col != "overrides" else ""
    if col == "test" and row.get("ci95") is not None:
        return f"{v:.2f} ± {row['ci95']:.2f}"
    if col in ("val", "test", "ci95"):
        return f"{v:.2f}"
    if col == "seconds":
        return f"{v:.1f}"
    if col == "budget":
        return f"{v:g}"
    return str(v)


SHOWN = ["run", "algo", "dataset", "backbone", "episode", "inference", "overrides", "val", "test", "seconds"]


def render_csv(rows: List[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (round(r[c], 4) if isinstance(r[c], float) else r[c])
                    for c in COLUMNS])
    return buf.getvalue()


def render_md(rows: List[Dict[str, Any]]) -> str:
    heads = [HEADERS.get(c, c) for c in SHOWN]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, c).replace("|", "\\|") for c in SHOWN) + " |")
    if any(r.get("budget", 1.0) != 1.0 for r in rows):
        lines += ["", "Rows with budget < 1 are approximate (a fraction of the preset's iterations)."]
    return "\n".join(lines) + "\n"


def run(args: List[str]) -> int:
    from metafsl.reporting import console

    own, rest = parse(args, OWN_KEYS, "results")
    dirs: List[Path] = []
    for a in rest:
        if "=" in a and not Path(a).exists():
            raise UserError(f"Unknown option '{a.split('=', 1)[0]}' for metafsl results; use "
                            f"{', '.join(OWN_KEYS)}.")
        dirs.append(Path(a))
    if not dirs:
        raise UserError("metafsl results needs run or sweep dirs: metafsl results <dir>... [sort=test].")
    fmt = own.get("format")
    if fmt is None and own.get("out"):
        fmt = {".csv": "csv", ".md": "md"}.get(Path(own["out"]).suffix, "md")
    fmt = fmt or "table"
    if fmt not in ("table", "csv", "md"):
        raise UserError(f"Unknown format '{fmt}'; choose one of: table, csv, md.")
    if own.get("plot") not in (None, "shots"):
        raise UserError(f"Unknown plot '{own['plot']}'; the only plot is plot=shots.")
    summaries = find_summaries(dirs)
    if not summaries:
        raise UserError(f"No {SUMMARY} under {', '.join(map(str, dirs))}: no finished runs there.")
    rows = [r for s in summaries for r in rows_of(s)]
    if own.get("sort"):
        rows = sort_rows(rows, own["sort"])
    text = render_csv(rows) if fmt == "csv" else render_md(rows)
    if fmt == "table":
        console.table(f"{len(rows)} results from {len(summaries)} runs", [HEADERS.get(c, c) for c in SHOWN],
                  [[_cell(r, c) for c in SHOWN] for r in rows], justify_right=["val (%)", "test (%)", "time (s)"])
    else:
        print(text, end="")
    if own.get("out"):  # printed above first: a failed write loses nothing shown
        target = Path(own["out"])
        write_text(target, render_csv(rows) if fmt == "csv" else render_md(rows), what=f"the table to {target}")
        console.info(f"Wrote {target}.")
    if own.get("plot") == "shots":
        default_dir = Path(own["out"]).parent if own.get("out") else (dirs[0] if dirs[0].is_dir() else dirs[0].parent)
        _plot(rows, Path(own.get("plot_file") or default_dir / "accuracy_vs_shots.png"))
    return 0


def _plot(rows: List[Dict[str, Any]], path: Path) -> None:
    from metafsl.reporting import console
    from metafsl.reporting.plots import plot_shots

    try:
        plot_shots(rows, path)
    except OSError as exc:
        raise UserError(f"Cannot write the plot {path} ({exc.strerror or exc.__class__.__name__}); "
                        "the table above was not affected.") from None
    console.info(f"Wrote {path}.")


COMMAND = Command(
    name="results",
    summary="one table of run/sweep dirs: metafsl results <dir>... [sort=test] [format=md] [plot=shots]",
    usage="metafsl results <dir>... [sort=<col>] [format=table|csv|md] [out=<file>] [plot=shots] "
          "[plot_file=<png>]",
    description="""
Reads every summary.json under the given run, sweep or reproduction dirs (a run's later
`metafsl test` records included, one row each) into one table: algo, dataset, backbone,
episode, overrides, val, test ± CI, time; a test on another dataset than the run's (a
cross-domain test) shows its dataset as ``trained → tested``.  sort=<col> sorts (accuracies and times descending,
text ascending); format=csv|md prints CSV or Markdown; out=<file> writes it (format from the
extension when not given); plot=shots draws test accuracy vs shots and vs ways across the runs
(plot_file, default accuracy_vs_shots.png beside out or in the first dir).""",
    examples=("metafsl results outputs/train outputs/sweep format=md",
              "metafsl results outputs/reproduce/snell2017_omniglot sort=test out=table.csv",
              "metafsl results outputs/sweep/<sweep> plot=shots"),
    run=run,
)
