"""The progress bar of long runs and sweeps: done/total, ETA and the latest accuracy.

It draws only on a terminal; piped into a file or CI log it stays silent (callers print one
plain line per finished piece instead), so logs hold no escape codes or half-drawn bars.
"""

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column


def progress_bar(console: Console, unit: str, quiet: bool = False) -> Progress:
    fixed = lambda: Column(no_wrap=True)  # noqa: E731
    return Progress(
        TextColumn("{task.description}", table_column=fixed()),
        BarColumn(bar_width=20, table_column=fixed()),
        MofNCompleteColumn(table_column=fixed()),
        TextColumn(unit, table_column=fixed()),
        TextColumn("ETA", table_column=fixed()),
        TimeRemainingColumn(table_column=fixed()),
        # on a narrow terminal the status gives way, not the count or the ETA
        TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
        console=console,
        disable=quiet or not console.is_terminal,
        expand=True,  # the status column takes what is left of the line, and no more
    )


def say(progress: Progress, quiet: bool, text: str) -> None:
    """One line above the bar on a terminal, one plain line in a log, nothing with --quiet."""
    if not quiet:
        progress.console.print(text, highlight=False)
