"""`metafsl tasks run=<run dir> [episodes=200] [support=<dir>] [overrides]`: a map of tasks. The
run's test episodes embedded by its learner's task encoder and projected to 2-D
(``metafsl.api.tasks``); prints the nearest tasks, then writes the map (PNG, CSV) into a new
``<run>/tasks/<stamp>/`` (``metafsl.api.write_tasks``)."""
from __future__ import annotations

from typing import List

from metafsl.arguments import boolean, parse
from metafsl.commands.base import Command
from metafsl.errors import UserError

OWN_KEYS = ("run", "episodes", "support", "checkpoint", "within", "nearest", "listed", "invert", "convert")


def _number(own, key: str, kind: type, default, words: str):
    text = own.get(key)
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"{key} must be {words} (got '{text}').") from None


def run(args: List[str]) -> int:
    from rich.markup import escape

    from metafsl import api
    from metafsl.reporting import console
    from metafsl.reporting.run_report import ConsoleReport
    from metafsl.reporting.task_map import show

    own, overrides = parse(args, OWN_KEYS, "tasks")
    if not own.get("run"):
        raise UserError("metafsl tasks needs the run whose tasks to map: metafsl tasks run=<run dir>.")
    episodes = _number(own, "episodes", int, 200, "an integer >= 2")
    within = _number(own, "within", float, 0.5, "a fraction between 0 and 1")
    k = _number(own, "nearest", int, 3, "an integer >= 1")
    listed = _number(own, "listed", int, 5, "an integer >= 0")
    invert_opt = own.get("invert", "auto")
    invert = None if invert_opt == "auto" else boolean("invert", invert_opt)
    result = api.tasks(own["run"], overrides, episodes, own.get("support") or None, own.get("checkpoint", "best"),
                       within, k, listed, invert, boolean("convert", own.get("convert")),
                       callbacks=[ConsoleReport()])
    show(result)
    folder = api.write_tasks(result)
    console.info(escape(f"Wrote {folder}/: task_map.png, task_map.csv, nearest.csv."))
    return 0


COMMAND = Command(
    name="tasks",
    summary="a map of tasks: metafsl tasks run=<run dir> episodes=200 [support=<dir>]",
    usage="metafsl tasks run=<run dir> [episodes=200] [support=<dir>] [within=0.5] [nearest=3] [listed=5] "
          "[checkpoint=best|last] [invert=auto|true|false] [convert=false] [overrides]",
    description="""
Embeds test episodes with the run's task encoder and draws them on a 2-D map.  A task's embedding
is, for metric learners (ProtoNet, Matching/Relation/Siamese networks, MetaOptNet), the mean of
its class prototypes; for the MAML family, Meta-SGD, Reptile and the meta-learner LSTM, the change
of the weights by test-time adaptation (ANIL: of its head); for Baseline, Baseline++ and MANN the
mean class prototype of the backbone's features.  The episodes are those of metafsl test (same
eval.seed; overrides such as episode=5w5s or eval.seed=7 apply); where the test classes have
groups (Omniglot alphabets, FC100 superclasses) a fraction within= of them is drawn within one
group, and each episode is coloured by its group (or 'mixed'); otherwise by the dataset's name.
The map is principal component analysis of the embeddings (linear: a new task is placed with the
same axes).  Prints, for the first listed= episodes, their nearest= nearest episodes (Euclidean
distance between embeddings), then writes task_map.png, task_map.csv
(episode,split,x,y,group,classes) and nearest.csv into a new <run>/tasks/<time>_<suffix>/.

support=<dir> (one sub-folder of images per class, as for metafsl predict) places your own task
on the map as a star, among as many episodes of the training split shaped like it (its number
of classes and shot), and names the training tasks nearest to it.""",
    examples=("metafsl tasks run=outputs/train/<run> episodes=200",
              "metafsl tasks run=outputs/train/<run> episodes=400 within=0.5 paths.data_dir=../shared/data",
              "metafsl tasks run=outputs/train/<run> support=my_support/"),
    run=run,
)
