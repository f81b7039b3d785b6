"""Timestamped events of a conversation, and the bus that delivers them.

Every stage reports what happened (speech start/end, turn taken, first token, first audio out,
barge-in, tool call/result, xruns) as an ``Event``; subscribers get them in order. Timestamps come
from the session's clock (virtual in tests), so latencies measured from events are exact there.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Callable

# Event kinds, one place so subscribers can rely on the spelling.
USER_SPEECH_START = "user_speech_start"
USER_SPEECH_END = "user_speech_end"
PARTIAL_TRANSCRIPT = "partial_transcript"
TRANSCRIPT = "transcript"
TURN_TAKEN = "turn_taken"
FIRST_TOKEN = "first_token"
REPLY_TEXT = "reply_text"
FIRST_AUDIO = "first_audio"
AGENT_DONE = "agent_done"
BARGE_IN = "barge_in"
CANCEL_DONE = "cancel_done"
BACKCHANNEL = "backchannel"
TOOL_CALL = "tool_call"
TOOL_RESULT = "tool_result"
TOOL_ERROR = "tool_error"
XRUN = "xrun"
WARNING = "warning"
SESSION_END = "session_end"  # the conversation ended; data is the session's summary
# Freeze-Omni: the turn-state head's verdict per listened chunk, a dismissed turn, and the stages
# of the paper's latency breakdown (respond decision -> first text token -> speech-decoder prefill
# done -> first speech token -> first decoded speech chunk -> first audio out).
TURN_STATE = "turn_state"
DISMISSED = "dismissed"
SPEECH_PREFILL = "speech_prefill"
FIRST_SPEECH_TOKEN = "first_speech_token"
FIRST_SPEECH_CHUNK = "first_speech_chunk"


@dataclass(frozen=True)
class Event:
    time: float  # seconds on the session clock
    kind: str  # one of the constants above
    turn: int  # index of the user turn this belongs to
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of events to subscribers; thread-safe, keeps a bounded history for metrics."""

    def __init__(self, history: int = 10_000):
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._history: list[Event] = []
        self._history_limit = history

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` for every event; returns a function that unsubscribes it."""
        with self._lock:
            self._subscribers.append(callback)
        return lambda: self._unsubscribe(callback)

    def emit(self, event: Event) -> None:
        with self._lock:
            self._history.append(event)
            if len(self._history) > self._history_limit:  # bounded: hour-long sessions stay small
                del self._history[: len(self._history) - self._history_limit]
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(event)

    def history(self, kind: str | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self._history if kind is None or e.kind == kind]

    def _unsubscribe(self, callback: Subscriber) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)


class JsonLinesWriter:
    """A subscriber that writes each event as one JSON line (``--events FILE``)."""

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._stream.write(event.to_json() + "\n")
            self._stream.flush()


def turn_latencies(events: list[Event]) -> dict[int, dict[str, float]]:
    """Per turn: seconds from end of user speech to the first token, first audio and so on."""
    ends = {e.turn: e.time for e in events if e.kind == USER_SPEECH_END}
    marks = (TRANSCRIPT, TURN_TAKEN, FIRST_TOKEN, FIRST_AUDIO)
    result: dict[int, dict[str, float]] = {}
    for event in events:
        if event.kind in marks and event.turn in ends:
            result.setdefault(event.turn, {}).setdefault(event.kind, event.time - ends[event.turn])
    return result


RESPOND_STAGES = (FIRST_TOKEN, SPEECH_PREFILL, FIRST_SPEECH_TOKEN, FIRST_SPEECH_CHUNK, FIRST_AUDIO)


def respond_breakdown(events: list[Event]) -> dict[int, dict[str, float]]:
    """Per turn: wall seconds from the respond decision to each stage of ``RESPOND_STAGES``.

    Each stage event carries ``since_decision_s``; the first of each kind per turn counts.
    """
    result: dict[int, dict[str, float]] = {}
    for event in events:
        if event.kind in RESPOND_STAGES and "since_decision_s" in event.data:
            result.setdefault(event.turn, {}).setdefault(event.kind, float(event.data["since_decision_s"]))
    return result
