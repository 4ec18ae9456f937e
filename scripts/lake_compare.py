#!/usr/bin/env python
"""Compare lake20 test records run by run (Lake et al.'s one-shot challenge, issue 30 section 1).

    python scripts/lake_compare.py <base> <other> [<other> ...] [--markdown]

Each argument is a run dir (or its ``summary.json``: every lake20 test it holds) or one record as
``metafsl test ... protocol=lake20`` writes it (``<run>/tests/<stamp>/result.json``). For each
record: the error with its 95% interval over runs (a run's 20 trials share an alphabet and a pair
of drawers, so the run is the unit; ``engine.protocols``), and its difference from the base's
record with the same test settings (``eval.tta``, how many models vote, any test-time
fine-tuning and ``eval.tta_rotations``), run by run, with the interval of that paired difference.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from metafsl.engine.protocols import paired_difference, runs_ci95
from metafsl.errors import UserError


def _load(path: Path) -> Dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"Cannot read a lake20 record from {path}: {e}.") from e


def read_records(path: Path) -> List[Tuple[str, Dict]]:
    """(label, record) of each lake20 test in ``path`` (a record, a summary.json or a run dir)."""
    data = _load(path / "summary.json" if path.is_dir() else path)
    if "per_run_error" in data:
        return [(str(path), data)]
    tests = [t for t in data.get("tests") or [] if "per_run_error" in t]
    if not tests:
        raise UserError(f"{path} holds no lake20 test record (no per_run_error).")
    return [(f"{path} #{i + 1}", t) for i, t in enumerate(tests)]


def settings(record: Dict) -> Tuple[str, int, str]:
    """What must match for two records to be compared: eval.tta, the number of models voting,
    and the other test-time choices: fine-tuning (``eval.finetune_*``) and rotation views
    (``eval.tta_rotations``); "" when neither."""
    tta = record.get("tta") or next((o.split("=", 1)[1] for o in record.get("overrides", [])
                                     if o.startswith("eval.tta=")), 1)
    ft, turns = record.get("finetune"), record.get("tta_rotations", 1)
    other = [f"fine-tuned {ft['steps']} steps, lr {ft['lr']:g}, {ft.get('views', 'flip_shift')} views"] if ft else []
    other += [f"{turns} rotations"] if turns > 1 else []
    return str(tta), 1 + len(record.get("ensemble") or []), ", ".join(other)


def rows(paths: List[Path]) -> List[List[str]]:
    records = [read_records(path) for path in paths]
    base = {}  # settings -> the base's record with them
    for label, rec in records[0]:
        base.setdefault(settings(rec), (label, rec))
    out = []
    for found in records:
        for label, rec in found:
            per_run = rec["per_run_error"]
            ci = runs_ci95(per_run)  # older records lack ci95
            tta, models, tuned = settings(rec)
            against = base.get((tta, models, tuned))
            if against is None or against[0] == label:
                diff, runs = ("(base)" if against else "(no base test alike)"), str(len(per_run))
            else:
                d = paired_difference(against[1]["per_run_error"], per_run)
                diff, runs = f"{d['difference']:+.2f} ± {d['ci95']:.2f}", str(d["runs"])
            test = f"tta={tta}" + (f", with {', '.join(Path(e).name for e in rec['ensemble'])}" if models > 1 else "")
            test += f", {tuned}" if tuned else ""
            out.append([label, test, f"{rec['error']:.2f} ± {ci:.2f}", diff, runs])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", type=Path, help="run dirs, summary.json files or lake20 records; the first is the base")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = p.parse_args(argv)
    try:
        table = rows(args.records)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    head = ["record", "test", "error % (95% CI over runs)", "minus base, run by run", "runs"]
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        print("\n".join("| " + " | ".join(r) + " |" for r in table))
    else:
        from metafsl.reporting import console

        console.table("lake20, compared run by run", head, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
