"""`metafsl predict run=<run dir> support=<dir> query=<dir or files>`: classify your own images
with a trained run (``metafsl.api.predict``), print the predictions, then write them as CSV."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from metafsl.arguments import boolean, parse
from metafsl.commands.base import Command
from metafsl.errors import UserError

OWN_KEYS = ("run", "support", "query", "out", "overwrite", "checkpoint", "invert", "convert", "device")


def output_path(run: Path, out: Optional[str], overwrite: bool) -> Path:
    """Where the CSV goes: a new unique file under <run>/predictions/, or ``out`` (an existing file
    only with overwrite=true; never a directory)."""
    from metafsl.engine.run_dir import unique_file

    if not out:
        try:
            return unique_file(run / "predictions", ".csv")
        except OSError as exc:
            raise UserError(f"Cannot write under {run / 'predictions'} ({exc.strerror}); the predictions "
                            "above were not saved; pass out=<a writable file>.") from None
    target = Path(out)
    if target.is_dir():
        raise UserError(f"out={target} is a directory; give a file name such as out={target / 'predictions.csv'}.")
    if target.exists() and not overwrite:
        raise UserError(f"out={target} already exists; pass overwrite=true to replace it, or another out=.")
    return target


def run(args: List[str]) -> int:
    from metafsl import api
    from metafsl.reporting import console, per_class

    own, _ = parse(args, OWN_KEYS, "predict", overrides=False)
    for key in ("run", "support", "query"):
        if not own.get(key):
            raise UserError("metafsl predict needs run=<run dir> support=<dir of class folders> "
                            "query=<dir or files>.")
    run = Path(own["run"])
    invert_opt = own.get("invert", "auto")
    invert = None if invert_opt == "auto" else boolean("invert", invert_opt)
    overwrite = boolean("overwrite", own.get("overwrite"))
    if own.get("out"):  # refuse a bad out= before the work, not after
        output_path(run, own["out"], overwrite)
    result = api.predict(run, Path(own["support"]), own["query"], own.get("checkpoint", "best"),
                     own.get("device", "cpu"), invert, boolean("convert", own.get("convert")))
    shots = ", ".join(f"{n} ({len(fs)})" for n, fs in zip(result.names, result.support_files))
    console.info(f"[bold]metafsl predict[/] {result.algo} from {run}; support classes: {shots}")
    best_p, best = result.best
    console.table(f"Predictions for {len(result.queries)} images", ["file", "predicted class", "probability"],
              [[str(q), result.names[k], f"{p:.3f}"] for q, k, p in zip(result.queries, best, best_p)],
              justify_right=["probability"])
    report = _labelled_report(result, own["query"])
    target = output_path(run, own.get("out"), overwrite)
    try:
        if report is not None:  # refused before anything is written
            per_class.check_free(target.parent, f"{target.stem}_", overwrite)
        result.write_csv(target)
    except UserError:
        if not own.get("out") and target.exists() and target.stat().st_size == 0:
            target.unlink()
        raise
    console.info(f"Wrote {target}.")
    if report is not None:
        written = per_class.write(report, target.parent, f"{target.stem}_")
        console.info(f"Wrote the per-class report beside it: {', '.join(p.name for p in written)}.")
    return 0


def _labelled_report(result, query: str):
    """Queries labelled by sub-folders named like the support classes (query/cat/*.png): the
    per-class report of the predictions, shown (None for unlabelled queries)."""
    from metafsl.engine.predict import query_classes
    from metafsl.reporting import per_class

    truth = query_classes(query, result.queries, result.names)
    if truth is None:
        return None
    _, best = result.best
    return per_class.report_predictions(truth, [result.names[k] for k in best], result.names)


COMMAND = Command(
    name="predict",
    summary="classify your images: metafsl predict run=<run dir> support=<dir> query=<dir or files>",
    usage="metafsl predict run=<run dir> support=<dir> query=<dir or files> [out=<csv>] "
          "[checkpoint=best|last] [invert=auto|true|false] [convert=false] [device=cpu]",
    description="""
Adapts a trained learner to *your* labelled images and classifies new ones: support is a folder
with one sub-folder of images per class (support/cat/*.png, support/dog/*.png); query is a
folder of images or a comma-separated list of files.  Images are converted to the run's image
size, channels and normalisation (Omniglot runs invert dark-on-light drawings to the bright-ink
form they were trained on: invert=auto).  A colour image given to a grayscale model is refused
unless convert=true.  Prints, then writes as CSV (default: a new
<run>/predictions/<time>_<suffix>.csv; an existing out= file only with overwrite=true), each
query's predicted class and its probability.  When the query folder is labelled by sub-folders
named like the support classes (query/cat/*.png, query/dog/*.png), also a per-class table
(precision, recall, F1, support) and the confusion matrix, written beside the CSV as
<name>_per_class.csv, <name>_confusion_matrix.csv and <name>_confusion_matrix.png.""",
    examples=("metafsl predict run=outputs/train/<run> support=my_support/ query=my_queries/",
              "metafsl predict run=outputs/train/<run> support=s/ query=a.png,b.png out=preds.csv"),
    run=run,
)
