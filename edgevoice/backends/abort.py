"""Stopping an engine call from another thread while it runs.

A speculative answer that the user talks over is dropped by the listen loop; its Whisper encoder
call (~140 ms on 2 cores) would otherwise run to its end and hold the think stage, so the next
silence's answer queued behind it. ``Abort`` is the dropping side's handle: ``set()`` marks it and
tells every call registered on it (onnxruntime's ``RunOptions.terminate``) to stop now. A backend
that cannot stop midway checks it before and after the call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class CallAborted(RuntimeError):
    """An engine call ended early because its ``Abort`` was set; its outputs do not exist."""


class Abort:
    """A one-way flag with hooks: set once, by any thread; the calls in flight are told at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._hooks: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            self._set = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def is_set(self) -> bool:
        return self._set

    def check(self) -> None:
        if self._set:
            raise CallAborted("the call was aborted")

    @contextmanager
    def hook(self, stop: Callable[[], None]) -> Iterator[None]:
        """Run ``stop`` if the flag is set while the block runs (at once if it already is)."""
        with self._lock:
            registered = not self._set
            if registered:
                self._hooks.append(stop)
        if not registered:
            stop()
        try:
            yield
        finally:
            with self._lock:
                if stop in self._hooks:
                    self._hooks.remove(stop)


def run_checked(abort: Abort | None, call: Callable[[], T]) -> T:
    """``call()``, which cannot be stopped midway: ``abort`` (if any) is checked before and after."""
    if abort is not None:
        abort.check()
    result = call()
    if abort is not None:
        abort.check()
    return result
