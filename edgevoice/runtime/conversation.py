"""What ``Agent`` and ``Client`` share: a conversation on a thread of its own, its events, and the
start / wait / stop lifecycle around it.

sounddevice's ``Stream`` is the model: ``start()`` returns at once, ``wait()`` blocks until the
conversation is over and raises what ended it if it failed, ``stop()`` ends it, ``run()`` is the
three in a row, and the object is a context manager that stops it. An application can swap an
in-process ``Agent`` for a ``Client`` of ``edgevoice serve`` without touching this part of its code.

A subclass starts its thread in ``start`` (through ``_start_thread``) and, when the conversation
ends, sets ``error`` if it failed and then ``_finished``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from edgevoice.runtime.events import Event, EventBus, JsonLinesWriter


class BackgroundConversation:
    """Events and the lifecycle of one conversation at a time, run on a background thread."""

    def __init__(self, bus: EventBus):
        self._bus = bus
        self.error: BaseException | None = None  # what ended the conversation, if it failed
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # stop() was asked: the thread winds down
        self._finished = threading.Event()  # the thread is done: wait() returns

    def on(self, kind: str | None, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` for every event of ``kind`` (None: all); returns an unsubscribe function."""
        return self._bus.subscribe(callback, kind)

    def write_events(self, stream) -> Callable[[], None]:
        """Write every event as a JSON line to ``stream`` (what ``--events`` does)."""
        return self._bus.subscribe(JsonLinesWriter(stream))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the conversation is over; False on timeout. Raises what ended it, if it failed."""
        done = self._finished.wait(timeout)
        if done and self.error is not None:
            raise self.error
        return done

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """A conversation's thread is alive (``start`` was called and it has not ended yet)."""
        return self._thread is not None and self._thread.is_alive()

    def _start_thread(self, target: Callable[..., None], args: tuple[Any, ...], name: str) -> None:
        self.error = None
        self._stopping.clear()
        self._finished.clear()
        self._thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._thread.start()

    def _join(self, timeout: float) -> None:
        """Ask the thread to end and give it ``timeout`` seconds (it is a daemon: never blocks exit)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run_to_end(self, *start_args: Any) -> None:
        """``start``, ``wait``, and ``stop`` whatever happened: the body of the blocking ``run``."""
        self.start(*start_args)
        try:
            self.wait()
        finally:
            self.stop()

    def start(self, *args: Any) -> BackgroundConversation:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
