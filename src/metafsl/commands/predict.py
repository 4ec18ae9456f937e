"""`metafsl predict run=<run dir> support=<dir> query=<folders, lists, globs, files>`: classify
your own images with a trained run (``metafsl.api.predict``), print the predictions, then write
them as CSV.

The command's own ``key=value`` arguments say what to classify and where the CSV goes (``run=``,
``support=``, ``query=``, ``out=`` ...); the ``predict.*`` keys (``predict.batch_size``,
``predict.top_k``, ``predict.reject_below``, ``predict.reject``) say how, spelled as issue 28
names them.  Every value is checked, in one sentence, before any work."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from metafsl.arguments import boolean, parse
from metafsl.commands.base import Command
from metafsl.errors import UserError

#: how predict classifies (``metafsl.engine.predict.PredictOptions``)
PREDICT_KEYS = ("predict.batch_size", "predict.top_k", "predict.reject_below", "predict.reject",
                "predict.transductive", "eval.finetune_steps", "eval.finetune_lr", "eval.finetune_views", "eval.tta")
OWN_KEYS = ("run", "support", "query", "out", "overwrite", "checkpoint", "invert", "convert", "device",
            *PREDICT_KEYS)


def predict_options(own: Dict[str, str]):
    """``metafsl.engine.predict.PredictOptions`` from the ``predict.*`` arguments, checked."""
    from metafsl.engine.predict import PredictOptions

    def number(key: str, kind: type, words: str):
        text = own.get(key)
        if text is None:
            return None
        try:
            return kind(text)
        except ValueError:
            raise UserError(f"{key} must be {words} (got '{text}').") from None

    batch = number("predict.batch_size", int, "an integer >= 1")
    reject = own.get("predict.reject")
    options = PredictOptions(
        PredictOptions.batch_size if batch is None else batch,
        number("predict.top_k", int, "an integer >= 1"),
        number("predict.reject_below", float, "a probability strictly between 0 and 1"),
        None if reject is None or reject.lower() == "none" else reject,
        own.get("predict.transductive") or "none",
        number("eval.finetune_steps", int, "an integer >= 0"),
        number("eval.finetune_lr", float, "a positive number"),
        own.get("eval.finetune_views"),
        number("eval.tta", int, "an integer from 1 to 10"))
    options.check()
    return options


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
    from metafsl.reporting.predict_report import print_predictions
    from metafsl.reporting.run_report import ConsoleReport

    own, _ = parse(args, OWN_KEYS, "predict", overrides=False)
    for key in ("run", "support", "query"):
        if not own.get(key):
            raise UserError("metafsl predict needs run=<run dir> support=<dir of class folders> "
                            "query=<folders, list files, globs or files>.")
    run = Path(own["run"])
    invert_opt = own.get("invert", "auto")
    invert = None if invert_opt == "auto" else boolean("invert", invert_opt)
    overwrite = boolean("overwrite", own.get("overwrite"))
    options = predict_options(own)
    if own.get("out"):  # refuse a bad out= before the work, not after
        output_path(run, own["out"], overwrite)
    result = api.predict(run, Path(own["support"]), own["query"], own.get("checkpoint", "best"),
                         own.get("device", "cpu"), invert, boolean("convert", own.get("convert")),
                         batch_size=options.batch_size, top_k=options.top_k, reject_below=options.reject_below,
                         reject=options.reject, transductive=options.transductive,
                         finetune_steps=options.finetune_steps, finetune_lr=options.finetune_lr,
                         finetune_views=options.finetune_views, tta=options.tta, callbacks=[ConsoleReport()])
    print_predictions(result, run)
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
    summary="classify your images: metafsl predict run=<run dir> support=<dir> query=<dirs, lists, globs>",
    usage="metafsl predict run=<run dir> support=<dir> query=<dirs, list.txt, 'glob', files> [out=<csv>] "
          "[predict.top_k=3] [predict.reject_below=<p> | predict.reject=auto] [predict.batch_size=256] "
          "[predict.transductive=none|tim|bdcspn|ptmap|laplacianshot] "
          "[eval.finetune_steps=0] [eval.finetune_lr=0.01] [eval.finetune_views=flip_shift|train] [eval.tta=1] "
          "[checkpoint=best|last] [invert=auto|true|false] [convert=false] [device=cpu]",
    description="""
Adapts a trained learner once to *your* labelled images and classifies new ones: support is a
folder with one sub-folder of images per class (support/cat/*.png, support/dog/*.png), the
classes named after the folders; query is any comma-separated mix of folders (walked
recursively; files without an image extension are ignored and counted), list files (.txt, one
path per line, relative to the list), globs ('shots/*.png', quoted) and files.  Images are read
and classified predict.batch_size at a time (default 256; memory stays flat) with a progress
bar; the MAML family and Reptile normalise each batch with its own statistics, so their
answers depend on the batch size.  Images are converted to the run's image size, channels and
normalisation (Omniglot runs invert dark-on-light drawings to the bright-ink form they were
trained on: invert=auto).  A colour image given to a grayscale model is refused unless
convert=true.

predict.top_k=<k>: classes listed per image (default min(3, classes)).
predict.reject_below=<p> (0 < p < 1): an image whose top probability is below p is "unknown".
predict.reject=auto: that threshold calibrated by leave-one-out on the support images (each
held out in turn, the learner adapted to the others): the largest one that keeps 95% of the
held-out images classified correctly; every class needs 2 images; the threshold and how it was
chosen are printed.
predict.transductive=tim|bdcspn|ptmap|laplacianshot (metric learners): the whole query set is
classified at once (embedded predict.batch_size at a time, then one transductive episode of all
of them, with the run's eval.<rule> settings): each prediction depends on the other queries.
eval.finetune_steps=<n> eval.finetune_lr=<lr>: a metric learner's backbone is first fine-tuned
on the support images (n SGD steps of its own loss on augmented views, P>M>F; the views:
eval.finetune_views=flip_shift, flips and shifts, or train, the run's training augmentation);
default: the run's eval.finetune_* (0 steps).
eval.tta=<n> (metric learners, Baseline, Baseline++): every image's embedding is averaged over n
fixed views (2-5: the image and its shifts by 1/28 of its side; 6-10: also their mirror images) before the
learner is adapted and the queries classified, as metafsl test eval.tta does; default: the
run's eval.tta (1: off); not with predict.reject=auto.

A query file that cannot be read as an image is skipped and listed by name (a row with
predicted=skipped and the reason in the CSV); an unreadable support image is an error, and so
is a support folder named unknown or skipped (the CSV's own answers).  Prints,
then writes as CSV (default: a new <run>/predictions/<time>_<suffix>.csv; an existing out= file
only with overwrite=true) one row per query file: file, predicted (a class, unknown or skipped),
probability, top1, top1_probability ... topk, topk_probability, p_<class> for every class, error.

When the query folder is labelled by sub-folders named like the support classes
(query/cat/*.png, query/dog/*.png), also a per-class table (precision, recall, F1, support, of
each image's most probable class) and the confusion matrix, written beside the CSV as
<name>_per_class.csv, <name>_confusion_matrix.csv and <name>_confusion_matrix.png.""",
    examples=("metafsl predict run=outputs/train/<run> support=my_support/ query=my_queries/",
              "metafsl predict run=outputs/train/<run> support=s/ query=a.png,b.png out=preds.csv",
              "metafsl predict run=outputs/train/<run> support=s/ query='shots/*.png',more.txt predict.reject=auto",
              "metafsl predict run=outputs/train/<run> support=s/ query=q/ predict.reject_below=0.6 predict.top_k=1"),
    run=run,
)
