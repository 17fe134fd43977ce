"""Rich progress bars for every long loop (quiet when not attached to a terminal and MEDBALANCE_QUIET=1)."""

from __future__ import annotations

import os
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def quiet() -> bool:
    return os.environ.get("MEDBALANCE_QUIET", "0") == "1"


def make_progress(*extra_columns, enabled: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet() or not enabled,
        transient=False,
    )


def track(it: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None:
        try:
            total = len(it)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with make_progress() as p:
        task = p.add_task(description, total=total)
        for x in it:
            yield x
            p.advance(task)
