"""A rich progress bar over simulated time, on stderr (silent when stderr is not a TTY)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def progress_bar(
    enabled: bool,
) -> Iterator[Callable[[str, float], Callable[[float], None] | None]]:
    """Yields ``start(label, total_s)`` → a callback taking the simulated time reached."""
    if not enabled:
        yield lambda label, total_s: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:

        def start(label: str, total_s: float) -> Callable[[float], None]:
            task = bar.add_task(label, total=total_s)
            step = total_s / 200
            last = [0.0]

            def advance(time_s: float) -> None:
                if time_s - last[0] >= step:  # update ~200 times a run, not per event
                    last[0] = time_s
                    bar.update(task, completed=min(time_s, total_s))

            return advance

        yield start
