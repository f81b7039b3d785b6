"""BackgroundConversation: the start / wait / stop lifecycle and events API that Agent and Client share."""

from __future__ import annotations

import io
import json
import threading

import pytest

from edgevoice.runtime.conversation import BackgroundConversation
from edgevoice.runtime.events import Event, EventBus


class Counting(BackgroundConversation):
    """Emits one event per tick until stopped, ``ticks`` run out, or ``fail_at`` raises."""

    def __init__(self, ticks: int | None = None, fail_at: int | None = None):
        super().__init__(EventBus())
        self.ticks, self.fail_at = ticks, fail_at
        self.stops = 0
        self.may_tick = threading.Event()  # the test lets the thread run once it has subscribed

    def start(self, label: str = "count") -> Counting:
        if self.running:
            raise RuntimeError("already counting")
        self._start_thread(self._count, (label,), "counting")
        return self

    def stop(self) -> None:
        self.stops += 1
        self.may_tick.set()
        self._join(timeout=5.0)

    def run(self, label: str = "count") -> Counting:
        self._run_to_end(label)
        return self

    def _count(self, label: str) -> None:
        try:
            self.may_tick.wait(5.0)
            n = 0
            while not self._stopping.is_set() and (self.ticks is None or n < self.ticks):
                if n == self.fail_at:
                    raise ValueError(f"tick {n} failed")
                self._bus.emit(Event(float(n), label, 0, {"n": n}))
                n += 1
                if self.ticks is None:
                    self._stopping.wait(0.001)
        except BaseException as exc:  # noqa: BLE001 - handed to wait()
            self.error = exc
        finally:
            self._finished.set()


def test_start_returns_at_once_and_wait_blocks_until_the_end():
    conversation = Counting(ticks=3)
    seen = []
    conversation.on("count", lambda event: seen.append(event.data["n"]))
    assert conversation.start() is conversation
    assert conversation.running
    assert not conversation.wait(timeout=0.05)  # held by may_tick: not over yet
    conversation.may_tick.set()
    assert conversation.wait(timeout=5.0) and seen == [0, 1, 2]
    conversation.stop()
    assert not conversation.running


def test_one_conversation_at_a_time_and_a_new_one_after_stop():
    conversation = Counting()
    conversation.start()
    with pytest.raises(RuntimeError, match="already"):
        conversation.start()
    conversation.stop()
    assert conversation.wait(timeout=5.0)
    conversation.may_tick.clear()
    conversation.start()  # stopped: a fresh conversation may start, its flags cleared
    assert not conversation.wait(timeout=0.05)
    conversation.stop()


def test_wait_raises_what_ended_the_conversation_and_run_still_stops():
    conversation = Counting(fail_at=1)
    conversation.may_tick.set()
    with pytest.raises(ValueError, match="tick 1 failed"):
        conversation.run()
    assert conversation.stops == 1
    conversation.fail_at = None
    conversation.ticks = 1
    conversation.run()  # the next conversation starts without the last one's error
    assert conversation.error is None and conversation.stops == 2


def test_the_context_manager_stops_and_events_unsubscribe():
    sink = io.StringIO()
    conversation = Counting(ticks=2)
    unsubscribe = conversation.write_events(sink)
    with conversation.start("tick"):
        conversation.may_tick.set()
        assert conversation.wait(timeout=5.0)
    assert conversation.stops == 1
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [line["data"]["n"] for line in lines] == [0, 1] and {line["kind"] for line in lines} == {"tick"}
    unsubscribe()
    conversation.may_tick.clear()
    conversation.start("tick")
    conversation.may_tick.set()
    conversation.wait(timeout=5.0)
    conversation.stop()
    assert len(sink.getvalue().splitlines()) == 2  # nothing written after unsubscribing
