"""Progress bars for long loops (calibration, evaluation, timing), silent with --quiet."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

T = TypeVar("T")


class Progress:
    """Wraps rich so library code can report progress without caring whether anyone watches."""

    def __init__(self, enabled: bool = False, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        if not self.enabled:
            yield from items
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with RichProgress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)

    def info(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)
