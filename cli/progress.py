"""Stage reporting for long commands (export, build): live in a terminal, plain lines in a log.

A cascade export runs for minutes; piped into a file or a CI log, a transient spinner shows
nothing at all, so without a terminal every stage is one timestamped line on stderr instead
(stdout stays the command's result).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def stage_reporter(console: Console | None = None) -> Iterator[Callable[[str], None]]:
    """Yield ``say(stage)``: a spinner with the stage on a terminal, else ``HH:MM:SS +12.3s stage`` lines."""
    console = console or Console(stderr=True)
    if console.is_terminal:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("starting", total=None)
            yield lambda stage: progress.update(task, description=stage)
        return
    start = time.monotonic()

    def say(stage: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        console.print(f"{stamp} +{time.monotonic() - start:.1f}s {stage}", markup=False, highlight=False, soft_wrap=True)

    yield say
