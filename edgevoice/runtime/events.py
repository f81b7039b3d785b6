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
# The words' end-of-turn vote (cascade): the speculative answer's transcript scored by the LLM
# (``prob``; None when nothing was heard) for the silence after ``speech_end``.
TEXT_END_OF_TURN = "text_end_of_turn"
TURN_TAKEN = "turn_taken"
FIRST_TOKEN = "first_token"
REPLY_TEXT = "reply_text"
FIRST_AUDIO = "first_audio"
AGENT_DONE = "agent_done"
BARGE_IN = "barge_in"
CANCEL_DONE = "cancel_done"
BACKCHANNEL = "backchannel"
AGENT_BACKCHANNEL = "agent_backchannel"  # the agent said "mhm" at a pause of the user's turn (stage start | cut)
# Cascade tool events carry ``early``: True for a read-only call started by a speculative answer
# before the turn was committed (``edgevoice.runtime.early_tools``), False otherwise.
TOOL_CALL = "tool_call"
TOOL_RESULT = "tool_result"
TOOL_ERROR = "tool_error"
EARLY_TOOL_USED = "early_tool_used"  # the committed reply asked for an early call: its result is used, no second call
EARLY_TOOL_DROPPED = "early_tool_dropped"  # an early call nobody committed asked for (``reason``): its result is ignored
# The knowledge memory retrieved passages for the turn (``stage``: "partial" while the user speaks,
# "final" on the transcript the answer uses; ``early``: the partial's retrieval was there to re-check).
KNOWLEDGE = "knowledge"
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
FIRST_SPEECH_CHUNK = "first_speech_chunk"  # the cascade emits it too: a reply's first synthesized audio
# VocalNet: the vocoder's first audio of a reply, before the speaker; ``job_start`` (session clock) and
# ``compute_s`` (engine seconds since then) place it on a live timeline (``_job_first_audio``).
FIRST_PCM = "first_pcm"


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

    def subscribe(self, callback: Subscriber, kind: str | None = None) -> Callable[[], None]:
        """Call ``callback`` for every event (or only those of ``kind``); returns a function that
        unsubscribes it."""
        if kind is not None:
            callback = _only(kind, callback)
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


def estimated_live_after_speech_end(events: list[Event]) -> dict[int, float]:
    """Per turn: ``estimated_live_first_audio`` counted from the end of the user's speech instead of
    the endpoint decision: what the user waits, the endpoint silence included.

    ``user_speech_end`` carries ``speech_end``, the end of the last frame the VAD heard as speech;
    the decision came ``silence_ms`` after it (the VAD's silence or the end-of-turn model's first
    "complete"), so the user waited that much more than the endpoint figure says.
    """
    ends = {e.turn: e for e in events if e.kind == USER_SPEECH_END and e.data.get("speech_end") is not None}
    return {turn: seconds + (ends[turn].time - float(ends[turn].data["speech_end"]))
            for turn, seconds in estimated_live_first_audio(events).items() if turn in ends}


def first_audio_after_speech_end(events: list[Event]) -> dict[int, float]:
    """Per turn: seconds from the end of the user's speech to the agent's first audio, as measured
    (a live run: compute included by the clock itself)."""
    ends = {e.turn: float(e.data["speech_end"]) for e in events
            if e.kind == USER_SPEECH_END and e.data.get("speech_end") is not None}
    result: dict[int, float] = {}
    for event in events:
        if event.kind == FIRST_AUDIO and event.turn in ends:
            result.setdefault(event.turn, event.time - ends[event.turn])
    return result


def estimated_live_first_audio(events: list[Event]) -> dict[int, float]:
    """Per turn: seconds from the endpoint to the first audio a live run would have had, compute included.

    On an unpaced virtual clock the stages run inline and take no virtual time, so the measured
    ``first_audio - endpoint`` (``turn_latencies``) leaves the engines' time out. This adds it back
    along the critical path of the reply that played first in the turn (cascade events):

        critical compute = ASR of the turn                      (transcript.compute_s)
                         + the words' end-of-turn score         (text_end_of_turn.compute_s, if any)
                         + LLM until its first phrase was cut   (reply_text.first_phrase_compute_s)
                         + voice until that phrase's first audio (first_speech_chunk.compute_s)

    The three events share the reply's id (``reply``); the reply is the one whose first speech
    chunk came last at or before the turn's first audio. The path starts when the answer job
    started, the transcript's time (inline, a job starts and ends at one instant); a speculative
    answer starts before the endpoint, and the endpoint silence hides that much compute:

        estimate = (first_audio - endpoint) + max(0, start + critical compute - endpoint)

    The first term is what compute does not explain (listen frames, device blocks). Assumed: the
    live machine computes as fast, and the stages were idle when the answer started (live, a
    partial transcript still running would delay it).

    A turn whose first audio is a tool's follow-up (the reply speaking a result) is estimated along
    the tool's path instead (``_live_follow_up_start``); without the cascade's tool events (a
    ``tool_call`` with ``call_id``) it gets no estimate. A reply made as one job of engine calls
    (VocalNet's, marked by ``first_pcm``) is estimated along that job (``_job_first_audio``).
    """
    ends = {e.turn: e.time for e in events if e.kind == USER_SPEECH_END}
    first_audio: dict[int, float] = {}
    parts: dict[Any, dict[str, Event]] = {}  # reply id -> its critical-path events by kind
    for event in events:
        if event.kind == FIRST_AUDIO and event.turn in ends:
            first_audio.setdefault(event.turn, event.time)
        elif event.kind in (TRANSCRIPT, TEXT_END_OF_TURN, REPLY_TEXT, FIRST_SPEECH_CHUNK) and "reply" in event.data:
            parts.setdefault(event.data["reply"], {})[event.kind] = event
    result: dict[int, float] = {}
    for turn, audio_at in first_audio.items():
        job = _job_first_audio(events, turn, audio_at, ends[turn])
        if job is not None:
            result[turn] = job
            continue
        chunks = [e for e in events if e.kind == FIRST_SPEECH_CHUNK and e.turn == turn and e.time <= audio_at
                  and "reply" in e.data]
        path = parts.get(chunks[-1].data["reply"], {}) if chunks else {}
        transcript, text = path.get(TRANSCRIPT), path.get(REPLY_TEXT)
        if transcript is None and text is not None and text.data.get("first_phrase_compute_s") is not None:
            start = _live_follow_up_start(events, text.time, parts)
            if start is not None:
                compute = text.data["first_phrase_compute_s"] + path[FIRST_SPEECH_CHUNK].data["compute_s"]
                result[turn] = (start - ends[turn]) + compute + (audio_at - text.time)
            continue
        if transcript is None or text is None or text.data.get("first_phrase_compute_s") is None:
            continue
        words = path.get(TEXT_END_OF_TURN)
        compute = (transcript.data["compute_s"] + (words.data["compute_s"] if words is not None else 0.0)
                   + text.data["first_phrase_compute_s"] + path[FIRST_SPEECH_CHUNK].data["compute_s"])
        unhidden = max(0.0, transcript.time + compute - ends[turn])
        result[turn] = (audio_at - ends[turn]) + unhidden
    return result


def _job_first_audio(events: list[Event], turn: int, audio_at: float, endpoint: float) -> float | None:
    """Seconds from the endpoint to the first audio of a reply made by one job of engine calls.

    Its ``first_pcm`` carries ``job_start`` (when the job began: at the decision, or earlier for a
    speculation started in the endpoint silence) and ``compute_s`` (its engine seconds until then).
    Live, the calls run back to back, so that PCM is ready at ``job_start + compute_s`` and plays
    no sooner than the endpoint; what the virtual clock shows after it (the speaker feed) is kept:

        estimate = max(0, job_start + compute_s - endpoint) + (first_audio - max(endpoint, first_pcm))

    The virtual time between the job's steps (inline stepping stands in for engine speed) is left
    out: the measured compute replaces it. None when the turn has no such event.
    """
    marks = [e for e in events if e.kind == FIRST_PCM and e.turn == turn and e.time <= audio_at
             and "job_start" in e.data and "compute_s" in e.data]
    if not marks:
        return None
    pcm = marks[-1]
    ready = float(pcm.data["job_start"]) + float(pcm.data["compute_s"])
    return max(0.0, ready - endpoint) + max(0.0, audio_at - max(endpoint, pcm.time))


def _live_follow_up_start(events: list[Event], at: float, parts: dict[Any, dict[str, Event]]) -> float | None:
    """When a tool's follow-up that started at ``at`` (virtual clock) could have started live.

    It speaks the last result that arrived before it, so it waits for that result and for the
    committed answer that asked for the call (``early_tool_used`` names it when an early call was
    used, else the call's own reply). Live, a call starts only once its reply's ASR and LLM have
    written it, ``max(call time, answer start + transcript.compute_s + tool_call.compute_s)``, and
    its result comes the tool's measured duration later; the committing answer is ready after
    its whole compute (``transcript.compute_s + reply_text.compute_s``).
    """
    results = [e for e in events if e.kind in (TOOL_RESULT, TOOL_ERROR) and e.time <= at and "call_id" in e.data]
    calls = {e.data["call_id"]: e for e in events if e.kind == TOOL_CALL and "call_id" in e.data}
    call = calls.get(results[-1].data["call_id"]) if results else None
    asker = parts.get(call.data.get("reply"), {}) if call is not None else {}
    if TRANSCRIPT not in asker:
        return None
    written = asker[TRANSCRIPT].time + asker[TRANSCRIPT].data["compute_s"] + call.data.get("compute_s", 0.0)
    result_at = max(call.time, written) + (results[-1].time - call.time)
    used = [e for e in events if e.kind == EARLY_TOOL_USED and e.data.get("call_id") == call.data["call_id"]]
    committer = parts.get(used[0].data.get("reply") if used else call.data.get("reply"), {})
    ready = at
    if TRANSCRIPT in committer and REPLY_TEXT in committer:
        ready = (committer[TRANSCRIPT].time + committer[TRANSCRIPT].data["compute_s"]
                 + committer[REPLY_TEXT].data["compute_s"])
    return max(at, result_at, ready)


def _only(kind: str, callback: Subscriber) -> Subscriber:
    return lambda event: callback(event) if event.kind == kind else None
