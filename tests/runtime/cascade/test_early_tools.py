"""Early, read-only tool calls: a lookup the speculative answer asks for runs while the user is
still speaking; its result is used by the committed reply when that asks for the same call, and
dropped otherwise; a tool with side effects never runs before the commit.

Whole conversations on the virtual clock with the real cascade engines (VAD, Whisper, the voice).
The language model is scripted: told about ``track_package`` and forced into a call by the
router, SmolLM2-135M writes ``{"number": "{{number}}"}`` (a template placeholder, not the digits
it heard), so it cannot decide which call the user asked for. The lookup takes ``LOOKUP_S`` of
session time (it waits on the virtual clock), as a web service would take real time.
"""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest
from conftest import espeak
from scripted import install

from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.cascade.pipeline import CascadePipeline
from edgevoice.runtime.cascade.session import DuplexSession, SessionOptions
from edgevoice.runtime.early_tools import EarlyToolCalls, Fate
from edgevoice.runtime.events import Event
from edgevoice.runtime.tools import Tool, ToolCall, ToolRunner

RATE = 16000
NUMBER = {"type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]}
LOOKUP_S = 0.4  # session seconds a package lookup takes
PAUSE_S = 0.35  # a pause mid-turn: past speculate_after_ms (160 ms), short of the VAD endpoint (600 ms)
FOUND = "in Lyon, arriving on Tuesday"


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def said(text: str) -> np.ndarray:
    """``text`` from espeak-ng without its leading and trailing silence (pauses are the test's)."""
    audio = espeak(text)
    voiced = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[voiced[0] : voiced[-1] + 1]


def script(messages):
    """A question about the time is answered; a package or order with digits gets a call; a tool
    result is spoken."""
    last = messages[-1]
    if last["role"] == "tool":
        body = json.loads(last["content"])
        return f"Your package is {body['result']}." if body["ok"] else "Sorry, that did not work."
    text = last["content"].lower()
    digits = "".join(re.findall(r"\d", text))
    if "time" in text:
        return "It is ten past three."
    for word, tool in (("package", "track_package"), ("order", "cancel_order")):
        if word in text and digits:
            return f'<tool_call>{{"name": "{tool}", "arguments": {{"number": "{digits}"}}}}</tool_call>'
    return "Could you say that again?"


class ClockedTool:
    """A tool that takes ``seconds`` of session time and records when (session time) it was called.

    Its wall-clock time is whatever the inline engines take meanwhile (seconds on a loaded CPU), so
    it is registered with a long ``timeout_s`` and let go when the session closes."""

    WALL_TIMEOUT_S = 600.0

    def __init__(self, clock, seconds: float, answer):
        self.clock, self.seconds, self.answer = clock, seconds, answer
        self.calls: list[tuple[float, str]] = []
        self.closed = threading.Event()

    def __call__(self, number: str):
        start = self.clock.now()
        self.calls.append((start, number))
        done = threading.Event()
        listener = lambda now: done.set() if now >= start + self.seconds else None
        self.clock.subscribe(listener)
        try:
            while not done.wait(0.05) and not self.closed.is_set():
                pass  # the listen loop moves the virtual clock
        finally:
            self.clock.unsubscribe(listener)
        return self.answer(number)


def converse(package, parts, tool_name="track_package", read_only=True, lookup_s=LOOKUP_S, extra_s=4.0):
    """Inline on the unpaced virtual clock (deterministic); VAD endpointing so that a pause of
    ``PAUSE_S`` is always mid-turn."""
    pipeline = CascadePipeline(package)
    llm = install(pipeline, script)
    recording = np.concatenate(parts)
    io = FileIO(recording, recording_rate=RATE, mic_rate=RATE, speaker_rate=22050)
    session = DuplexSession(pipeline, io, SessionOptions(threaded=False, semantic_endpointing=False))
    tool = ClockedTool(io.clock, lookup_s, lambda number: FOUND if number == "44712" else "not found")
    session.tools.register(Tool(tool_name, tool, "Where a parcel is now, by its tracking number.", NUMBER,
                                timeout_s=ClockedTool.WALL_TIMEOUT_S, read_only=read_only))
    with io:
        session.run(len(recording) / RATE + extra_s)
    session.close()
    tool.closed.set()
    errors = [e.data for e in session.events.history(ev.TOOL_ERROR)]
    assert not errors, errors  # a lookup never failed or timed out
    return session, tool, llm


def events(session, kind, turn=None):
    return [e for e in session.events.history(kind) if turn is None or e.turn == turn]


def first_audio_after_end(session, turn=1) -> float:
    [end] = events(session, ev.USER_SPEECH_END, turn)
    return events(session, ev.FIRST_AUDIO, turn)[0].time - end.time


def tool_messages(session):
    return [json.loads(m["content"]) for m in session.agent.history if m["role"] == "tool"]


@pytest.mark.slow
def test_a_lookup_fires_before_the_user_has_finished_and_the_reply_starts_sooner(cascade_package):
    """The issue's example: the lookup starts on the number, while the user still talks."""
    question, more = said("Where is my package? The number is 4 4 7 1 2."), said("It was sent on Monday.")
    parts = [silence(0.3), question, silence(PAUSE_S), more, silence(1.0)]
    more_starts = (0.3 * RATE + len(question) + PAUSE_S * RATE) / RATE

    early, lookup, _ = converse(cascade_package, parts, read_only=True)
    [call] = events(early, ev.TOOL_CALL)
    assert call.data["early"] and call.data["arguments"] == {"number": "44712"}
    assert call.time < more_starts  # asked in the pause, before the user had finished
    assert len(lookup.calls) == 1  # the final answer asked again: the kept result, not a second call
    [result] = events(early, ev.TOOL_RESULT)
    assert result.data["early"] and result.time < events(early, ev.USER_SPEECH_END)[0].time
    [used] = events(early, ev.EARLY_TOOL_USED)
    assert used.data["call_id"] == call.data["call_id"] and not used.data["waiting"]
    assert used.time >= events(early, ev.TURN_TAKEN)[0].time and not events(early, ev.EARLY_TOOL_DROPPED)
    assert tool_messages(early) == [{"name": "track_package", "ok": True, "result": FOUND}]
    assert f"Your package is {FOUND}." in [e.data["text"] for e in events(early, ev.REPLY_TEXT)]

    # The control: the same tool with side effects assumed waits for the commit, then runs.
    late, late_lookup, _ = converse(cascade_package, parts, read_only=False)
    [late_call] = events(late, ev.TOOL_CALL)
    assert not late_call.data["early"] and late_call.time >= events(late, ev.TURN_TAKEN)[0].time
    assert len(late_lookup.calls) == 1 and not events(late, ev.EARLY_TOOL_USED)
    early_s, late_s = first_audio_after_end(early), first_audio_after_end(late)
    # Compute runs in no virtual time here: the estimate adds the engines' measured time back.
    live = [ev.estimated_live_first_audio(s.events.history())[1] for s in (early, late)]
    spoken = [ev.estimated_live_after_speech_end(s.events.history())[1] for s in (early, late)]
    print(f"\nfirst audio after the endpoint, virtual clock: early {early_s:.3f} s, at the commit {late_s:.3f} s;"
          f" estimated live: {live[0]:.3f} s vs {live[1]:.3f} s; after the last word: {spoken[0]:.3f} s vs"
          f" {spoken[1]:.3f} s")
    assert early_s < 0.1 < late_s and late_s - early_s >= LOOKUP_S - 0.1  # the lookup's time is hidden
    # The estimates add each run's own measured compute (whole-turn ASR on a loaded CPU varies by
    # seconds between runs), so they are printed, not compared; both must exist (a follow-up's path).
    assert all(seconds > 0 for seconds in live)


@pytest.mark.slow
def test_different_arguments_in_the_final_words_drop_the_early_result(cascade_package):
    start, rest = said("Where is my package? The number is 4 4 7"), said("1 2.")
    session, lookup, _ = converse(cascade_package, [silence(0.3), start, silence(PAUSE_S), rest, silence(1.0)])
    assert [number for _, number in lookup.calls] == ["447", "44712"]  # the tool ran again for the final words
    calls = events(session, ev.TOOL_CALL)
    assert [c.data["arguments"]["number"] for c in calls] == ["447", "44712"]
    [dropped] = events(session, ev.EARLY_TOOL_DROPPED)
    assert dropped.data["call_id"] == calls[0].data["call_id"] and dropped.data["reason"] == "different arguments"
    [used] = events(session, ev.EARLY_TOOL_USED)
    assert used.data["call_id"] == calls[1].data["call_id"]
    assert tool_messages(session) == [{"name": "track_package", "ok": True, "result": FOUND}]  # "447" left no trace
    replies = [e.data["text"] for e in events(session, ev.REPLY_TEXT)]
    assert f"Your package is {FOUND}." in replies and not any("not found" in r for r in replies)


@pytest.mark.slow
def test_a_tool_with_side_effects_never_runs_before_the_commit(cascade_package):
    order, more = said("Please cancel my order, the number is 4 4 7 1 2."), said("It was sent on Monday.")
    session, cancel, llm = converse(cascade_package, [silence(0.3), order, silence(PAUSE_S), more, silence(1.0)],
                                    tool_name="cancel_order", read_only=False)
    [taken] = events(session, ev.TURN_TAKEN)
    # Both speculative answers (in the pause and in the endpoint silence) asked for the call ...
    asked = [p for p in llm.prompts if p[-1]["role"] == "user" and "order" in p[-1]["content"].lower()]
    assert len(asked) >= 2 and len(events(session, ev.TRANSCRIPT)) >= 2
    assert all(e.data["speculative"] and e.time < taken.time for e in events(session, ev.TRANSCRIPT))
    # ... but it ran once, after the commit, for the answer that got the floor.
    assert len(cancel.calls) == 1 and cancel.calls[0][0] >= taken.time
    [call] = events(session, ev.TOOL_CALL)
    assert not call.data["early"] and call.time >= taken.time
    assert not events(session, ev.EARLY_TOOL_USED) and not events(session, ev.EARLY_TOOL_DROPPED)
    assert all(not e.data["early"] for e in events(session, ev.TOOL_RESULT))


@pytest.mark.slow
def test_a_dropped_early_result_never_reaches_the_next_turn(cascade_package):
    question, change = said("Where is my package? The number is 4 4 7 1 2."), said("Never mind, what time is it?")
    parts = [silence(0.3), question, silence(PAUSE_S), change, silence(3.5), question, silence(1.0)]
    # The lookup is slow: the first one is still running when its turn is answered without it.
    session, lookup, _ = converse(cascade_package, parts, lookup_s=5.0, extra_s=8.0)
    assert len(lookup.calls) == 2  # asked in turn 1's pause, and again in turn 2
    first, second = events(session, ev.TOOL_CALL)
    assert first.turn == 1 and second.turn == 2 and first.data["early"] and second.data["early"]
    [dropped] = events(session, ev.EARLY_TOOL_DROPPED)
    assert dropped.turn == 1 and dropped.data["call_id"] == first.data["call_id"]
    assert dropped.data["reason"] == "not asked by the reply" and not dropped.data["finished"]
    [used] = events(session, ev.EARLY_TOOL_USED)
    assert used.turn == 2 and used.data["call_id"] == second.data["call_id"]
    # The first result arrived after its turn was answered, and was ignored: one tool message,
    # spoken after turn 2 only.
    late = [e for e in events(session, ev.TOOL_RESULT) if e.data["call_id"] == first.data["call_id"]]
    assert late and late[0].data["early"]
    assert len(tool_messages(session)) == 1
    [turn_2_end] = events(session, ev.USER_SPEECH_END, 2)
    spoken = [e.time for e in events(session, ev.REPLY_TEXT) if e.data["text"].startswith("Your package")]
    assert spoken and min(spoken) > turn_2_end.time
    roles = [(m["role"], m["content"]) for m in session.agent.history]
    assert roles[1] == ("assistant", "It is ten past three.")  # turn 1 was answered without the lookup
    assert [role for role, _ in roles].index("tool") > 2  # the one result joined turn 2, after its question


def wait_for(outcomes: list, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not outcomes and time.monotonic() < deadline:
        time.sleep(0.01)


class Gate:
    """A read-only lookup the test lets finish."""

    def __init__(self):
        self.go, self.calls = threading.Event(), 0

    def __call__(self, number):
        self.calls += 1
        self.go.wait(5.0)
        return f"found {number}"


def test_a_barge_in_drops_what_its_turn_kept_even_a_result_still_running():
    """What the session does at a barge-in (``abandon`` up to the interrupted turn): the kept call
    is dropped, its late outcome is ignored, and the next turn gets no result from it."""
    outcomes, emitted = [], []
    runner = ToolRunner(outcomes.append)
    lookup = Gate()
    runner.register(Tool("track_package", lookup, parameters=NUMBER, read_only=True))
    runner.register(Tool("cancel_order", lambda number: "cancelled", parameters=NUMBER))
    assert runner.read_only("track_package") and not runner.read_only("cancel_order")
    assert not runner.read_only("unknown")
    early = EarlyToolCalls(runner, lambda kind, turn, **data: emitted.append((kind, turn, data)))
    call = ToolCall("track_package", {"number": "44712"})
    early.start(call, turn=1, reply=7, compute_s=0.1)
    early.start(ToolCall("track_package", {"number": "44712"}), turn=1, reply=8, compute_s=0.1)  # asked again
    early.abandon(1, "barge-in")
    lookup.go.set()
    wait_for(outcomes)
    assert lookup.calls == 1 and early.arrived(outcomes[0]) is Fate.DROP
    early.commit(call, turn=2, reply=9, compute_s=0.1)  # the next turn asks the same: a new call
    kinds = [(kind, turn, data.get("early"), data.get("reason")) for kind, turn, data in emitted]
    assert kinds == [(ev.TOOL_CALL, 1, True, None), (ev.EARLY_TOOL_DROPPED, 1, None, "barge-in"),
                     (ev.TOOL_CALL, 2, False, None)]
    assert early.take_ready() == [] and not early.pending
    runner.shutdown()


def test_an_early_result_that_arrives_after_the_claim_joins_then():
    outcomes, emitted = [], []
    runner = ToolRunner(outcomes.append)
    lookup = Gate()
    runner.register(Tool("track_package", lookup, parameters=NUMBER, read_only=True))
    early = EarlyToolCalls(runner, lambda kind, turn, **data: emitted.append((kind, data)))
    call = ToolCall("track_package", {"number": "44712"})
    early.start(call, turn=3, reply=1, compute_s=0.0)
    early.commit(ToolCall("track_package", {"number": "44712"}), turn=3, reply=2, compute_s=0.0)
    early.settle(3)  # nothing else was kept: nothing dropped
    assert [k for k, _ in emitted] == [ev.TOOL_CALL, ev.EARLY_TOOL_USED] and emitted[1][1]["waiting"]
    lookup.go.set()
    wait_for(outcomes)
    assert early.arrived(outcomes[0]) is Fate.USE and outcomes[0].result == "found 44712"
    assert lookup.calls == 1
    runner.shutdown()


def _answer_events(turn, at, reply, asr, llm, call=None):
    """An inline speculative answer at ``at`` that writes only a tool call (no speech)."""
    events = [Event(at, ev.TRANSCRIPT, turn, {"reply": reply, "compute_s": asr}),
              Event(at, ev.REPLY_TEXT, turn, {"reply": reply, "compute_s": llm, "first_phrase_compute_s": None})]
    if call is not None:
        events.insert(1, Event(at if call.get("early") else call["at"], ev.TOOL_CALL, turn,
                               {"call_id": call["id"], "reply": reply, "compute_s": llm, "early": call.get("early")}))
    return events


def _follow_up(turn, at, reply, llm, voice):
    return [Event(at, ev.FIRST_SPEECH_CHUNK, turn, {"reply": reply, "compute_s": voice}),
            Event(at, ev.REPLY_TEXT, turn, {"reply": reply, "compute_s": llm + voice, "first_phrase_compute_s": llm}),
            Event(at + 0.032, ev.FIRST_AUDIO, turn)]


def test_a_tool_follow_up_is_estimated_along_the_tool_path():
    """``events.estimated_live_first_audio`` for a reply that speaks a tool's result: the call waits
    for its answer's ASR and LLM, the result for the tool, the follow-up for the committed answer;
    then the follow-up's own LLM and voice."""
    end = Event(5.0, ev.USER_SPEECH_END, 1)
    # At the commit: the answer began 0.44 s before the endpoint, ASR 0.3 + LLM 0.1 (hidden), the
    # call at the endpoint, its result 0.4 s later, the follow-up (LLM 0.2, voice 0.1) at once.
    late = [*_answer_events(1, 4.56, 3, 0.3, 0.1, {"id": 1, "at": 5.0}), end,
            Event(5.4, ev.TOOL_RESULT, 1, {"call_id": 1}), *_follow_up(1, 5.4, 4, 0.2, 0.1)]
    assert ev.estimated_live_first_audio(late) == {1: pytest.approx(0.4 + 0.2 + 0.1 + 0.032)}
    # Early: the call came from a pause 1.5 s before, its result was there; the committed answer
    # (same shape as above) claimed it: only the follow-up's own compute is left.
    early = [*_answer_events(1, 3.5, 1, 0.3, 0.1, {"id": 1, "early": True}),
             Event(3.9, ev.TOOL_RESULT, 1, {"call_id": 1}), *_answer_events(1, 4.56, 3, 0.3, 0.1), end,
             Event(5.0, ev.EARLY_TOOL_USED, 1, {"call_id": 1, "reply": 3}), *_follow_up(1, 5.0, 4, 0.2, 0.1)]
    assert ev.estimated_live_first_audio(early) == {1: pytest.approx(0.2 + 0.1 + 0.032)}
    # A slow machine: the committed answer's ASR (1.0 s) ends after the endpoint and holds both.
    slow = [*early[:4], *_answer_events(1, 4.56, 3, 1.0, 0.1), *early[6:]]
    assert ev.estimated_live_first_audio(slow) == {1: pytest.approx(4.56 + 1.1 - 5.0 + 0.3 + 0.032)}


@pytest.mark.slow
def test_the_agent_registers_read_only_tools_and_its_sessions_run_them_early(cascade_package):
    from edgevoice import Agent

    agent = Agent(cascade_package.directory)

    @agent.tool(description="Where a parcel is now.", parameters=NUMBER, read_only=True)
    def track_package(number):
        return FOUND

    @agent.tool(description="Cancel an order.", parameters=NUMBER)
    def cancel_order(number):
        return "cancelled"

    io = FileIO(silence(0.5), recording_rate=RATE, mic_rate=RATE, speaker_rate=agent.speaker_rate)
    session = agent.run(io)
    assert session.tools.read_only("track_package") and not session.tools.read_only("cancel_order")
    summary = session.events.history(ev.SESSION_END)[-1].data
    assert summary["early_tool_calls"] == 0 and summary["early_tool_calls_used"] == 0
