"""The console: rich progress bars on long work, tables of results, one-line errors."""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    console.print(message, highlight=False)


def training_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=30),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("acc {task.fields[acc]}"),
        TextColumn("val {task.fields[val]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def simple_progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=30),
                    TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                    console=console, transient=True)


def fmt_acc(acc: Optional[float], ci95: Optional[float] = None) -> str:
    if acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return "-"
    return f"{acc:.2f}" if ci95 is None else f"{acc:.2f} ± {ci95:.2f}"


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence], justify_right: Sequence[str] = ()) -> None:
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, justify="right" if c in justify_right else "left")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console.print(t)
