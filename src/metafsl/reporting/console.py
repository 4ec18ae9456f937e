"""The console: rich progress bars on long work, tables of results, one-line errors, and the
handler that shows the library's ``logging`` notices (logger ``metafsl``) as plain lines."""
from __future__ import annotations

import logging
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
    console.print(message, highlight=False, soft_wrap=True)


class NoticeHandler(logging.Handler):
    """``metafsl`` log records as lines: INFO on stdout, WARNING and above on stderr as
    ``warning: ...``; never wrapped, never read as markup (paths may hold brackets)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                err_console.print(f"warning: {text}", highlight=False, markup=False, soft_wrap=True)
            else:
                console.print(text, highlight=False, markup=False, soft_wrap=True)
        except Exception:  # a notice must never cost a run
            self.handleError(record)


def show_notices() -> None:
    """Show the library's notices on the console (idempotent; what the CLI does at start)."""
    logger = logging.getLogger("metafsl")
    if not any(isinstance(h, NoticeHandler) for h in logger.handlers):
        logger.addHandler(NoticeHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.disabled = False


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


def fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


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
