"""`metafsl data dataset=<name> [overrides]`: check a dataset's files and print per-split statistics."""
from __future__ import annotations

from typing import Any, Dict, List

from metafsl.commands.base import Command


def show_dataset(cfg: Dict[str, Any]) -> int:
    from rich.markup import escape

    from metafsl.data import load_dataset
    from metafsl.data.report import episode_need
    from metafsl.reporting import console

    ds = load_dataset(cfg["dataset"], cfg["paths"])
    rows = []
    for name, split in ds.splits.items():
        counts = split.counts()
        c, h, w = split.images.shape[1:]
        rows.append([name, split.n_classes, split.images.shape[0], int(counts.min()) if len(counts) else 0,
                     int(counts.max()) if len(counts) else 0, f"{c}x{h}x{w}"])
    console.table(f"Dataset {ds.name}", ["split", "classes", "images", "min/class", "max/class", "image (CxHxW)"],
                  rows, justify_right=["classes", "images", "min/class", "max/class"])
    if ds.skipped:
        console.info(f"[yellow]{len(ds.skipped)} unreadable file(s) skipped:[/]")
        for path in ds.skipped[:50]:
            console.info(f"  {escape(str(path))}")
        if len(ds.skipped) > 50:
            console.info(f"  ... and {len(ds.skipped) - 50} more")
    else:
        console.info("0 unreadable files.")
    for entry in ds.ignored:
        console.info(f"[yellow]not used:[/] {escape(entry)}")
    report = ds.report(episode_need(cfg["episode"]))
    if report.dropped:  # named for the configured episodes (n_shot + n_query per class)
        console.console.print(report.line(), soft_wrap=True, highlight=False, markup=False)
    return 0


def data_job(cfg) -> int:
    from metafsl.api import resolved

    return show_dataset(resolved(cfg))


def run(args: List[str]) -> int:
    from metafsl.commands.hydra_app import run_app

    return run_app("data", data_job, args)


COMMAND = Command(
    name="data",
    summary="check a dataset's files and print per-split statistics",
    usage="metafsl data dataset=<name> [paths.data_dir=<dir>] [dataset.key=value ...]",
    description="""
Loads the dataset as a training would (building its decode cache), then prints per split the
classes, images, images per class and image size, the unreadable files it skipped, the entries
it did not use and the classes too small for the configured episodes.""",
    examples=("metafsl data dataset=omniglot paths.data_dir=../shared/data",
              "metafsl data dataset=folder dataset.root=my_images/"),
    run=run,
    config="data",
)
