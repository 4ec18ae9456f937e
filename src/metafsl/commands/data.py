"""`metafsl data dataset=<name>`: check the files and print per-split statistics."""
from __future__ import annotations

from typing import Any, Dict

from rich.markup import escape

from metafsl.data import load_dataset
from metafsl.data.report import episode_need
from metafsl.reporting import console as out


def data_command(cfg: Dict[str, Any]) -> int:
    ds = load_dataset(cfg["dataset"], cfg["paths"])
    rows = []
    for name, split in ds.splits.items():
        counts = split.counts()
        c, h, w = split.images.shape[1:]
        rows.append([name, split.n_classes, split.images.shape[0], int(counts.min()) if len(counts) else 0,
                     int(counts.max()) if len(counts) else 0, f"{c}x{h}x{w}"])
    out.table(f"Dataset {ds.name}", ["split", "classes", "images", "min/class", "max/class", "image (CxHxW)"],
              rows, justify_right=["classes", "images", "min/class", "max/class"])
    if ds.skipped:
        out.info(f"[yellow]{len(ds.skipped)} unreadable file(s) skipped:[/]")
        for path in ds.skipped[:50]:
            out.info(f"  {path}")
        if len(ds.skipped) > 50:
            out.info(f"  ... and {len(ds.skipped) - 50} more")
    else:
        out.info("0 unreadable files.")
    for entry in ds.ignored:
        out.info(f"[yellow]not used:[/] {escape(entry)}")
    report = ds.report(episode_need(cfg["episode"]))
    if report.dropped:  # named for the configured episodes (n_shot + n_query per class)
        out.console.print(report.line(), soft_wrap=True, highlight=False, markup=False)
    return 0
