"""Transductive inference against the run's own (inductive) rule, on the same test episodes.

    python scripts/bench_transductive.py <run dir> <evidence dir> [--episodes 600] [--shots 1,5]
    python scripts/bench_transductive.py <run dir> <evidence dir> --smoke   # 2 episodes, seconds

Tests a trained metric-learner run (``metafsl test``'s ``metafsl.api.evaluate``) once per
``eval.transductive`` (none, tim, bdcspn, ptmap, laplacianshot; each with its paper's settings,
``conf/eval/default.yaml``) at each shot (the run's test way and query; a shot the dataset
cannot give is listed as skipped, with the reason), all on the episodes of ``eval.seed``.
Writes ``transductive.md`` (a table: accuracy ± 95% CI and the seconds each test took) and
``transductive.json`` into the evidence dir; each test's record dir goes under
``<evidence dir>/tests/`` (every test is also appended to the run's summary.json history, as
``metafsl test`` does).  Figures belong in docs/benchmarks.md only from an idle machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from metafsl import api  # noqa: E402
from metafsl.engine.summary import inference_label  # noqa: E402
from metafsl.errors import UserError  # noqa: E402

METHODS = ("none", "tim", "bdcspn", "ptmap", "laplacianshot")


def one_test(run: Path, out: Path, method: str, shot: int, episodes: int, extra=()) -> dict:
    """One test's row: accuracy, CI, the inference label and wall seconds (or why it was skipped)."""
    overrides = [f"eval.transductive={method}", f"episode.test.n_shot={shot}", f"eval.episodes={episodes}", *extra]
    t0 = time.perf_counter()
    try:
        record = api.evaluate(run, overrides, out_dir=out / "tests" / f"{shot}shot_{method}", overwrite=True).tests[-1]
    except UserError as exc:
        return {"method": method, "shot": shot, "skipped": str(exc)}
    return {"method": method, "shot": shot, "acc": record["acc"], "ci95": record["ci95"],
            "episodes": record["episodes"], "inference": inference_label(record),
            "seconds": round(time.perf_counter() - t0, 2), "eval_seconds": record.get("seconds"),
            "episode": record.get("episode")}


def markdown(run: Path, rows: list) -> str:
    lines = [f"# Transductive inference on `{run}`", "",
             "Same test episodes (eval.seed) for every row; accuracy in %, mean ± 95% CI; seconds: the whole "
             "test (model load, embedding, rule), eval seconds: the episodes alone.", "",
             "| shot | inference | test acc (%) | episodes | seconds | eval seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['shot']} | {r['method']} | skipped: {r['skipped']} | | | |")
        else:
            lines.append(f"| {r['shot']} | {r['inference']} | {r['acc']:.2f} ± {r['ci95']:.2f} | {r['episodes']} "
                         f"| {r['seconds']:.1f} | {r['eval_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a trained run dir (a metric learner)")
    ap.add_argument("out", type=Path, help="the evidence dir (created)")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--shots", default="1,5", help="comma-separated test shots")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--smoke", action="store_true", help="2 episodes, and TIM at 10 iterations: seconds")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    episodes = 2 if args.smoke else args.episodes
    rows = []
    for shot in (int(s) for s in args.shots.split(",")):
        for method in args.methods.split(","):
            extra = ["eval.tim.iterations=10"] if args.smoke and method == "tim" else []
            rows.append(one_test(args.run, args.out, method, shot, episodes, extra))
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "transductive.md").write_text(markdown(args.run, rows))
    meta = {"run": str(args.run), "machine": platform.platform(), "python": platform.python_version(),
            "smoke": args.smoke, "rows": rows}
    (args.out / "transductive.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {args.out / 'transductive.md'} and {args.out / 'transductive.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
