"""Clocks: real time for devices, virtual time for files.

Everything in the runtime that needs "now" or has to wait asks a clock instead of ``time``, so
the same loops run live on a sound card (``RealClock``) or on a file as fast as the CPU allows,
deterministically (``VirtualClock``: time moves only when the test or driver says so).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the clock started."""

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass (really, or virtually)."""


class RealClock:
    """Monotonic wall-clock time, starting at 0 when constructed."""

    def __init__(self):
        self._origin = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._origin

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """Time that moves only through ``advance``; listeners see every step, in order.

    A ``FileIO`` subscribes so that microphone samples appear and speaker samples are consumed
    exactly as a device would have done in that much real time. ``sleep`` is ``advance``: a loop
    that waits 20 ms on this clock returns at once with the clock 20 ms later.
    """

    def __init__(self, start: float = 0.0):
        self._now = float(start)
        self._listeners: list[Callable[[float], None]] = []
        self._lock = threading.Lock()  # advance() from two threads must not interleave listener calls

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (≥ 0), run the listeners, return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance({seconds}))")
        with self._lock:
            self._now += seconds
            for listener in list(self._listeners):
                listener(self._now)
            return self._now

    def advance_to(self, when: float) -> float:
        """Move time forward to ``when`` (no-op if it has passed already)."""
        return self.advance(max(0.0, when - self._now))

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def subscribe(self, listener: Callable[[float], None]) -> None:
        """Call ``listener(now)`` after every advance (and once now, to catch up)."""
        with self._lock:
            self._listeners.append(listener)
            listener(self._now)

    def unsubscribe(self, listener: Callable[[float], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
