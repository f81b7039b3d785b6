"""File mode's first-audio latency: what a live run would have had, compute included.

On an unpaced virtual clock the engines take no time, so the measured latency is ~0; the
estimate adds the compute of the reply's critical path (ASR, LLM to the first phrase, voice to
the first audio) that the endpoint silence did not hide (``events.estimated_live_first_audio``).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import espeak
from edgevoice import Agent
from edgevoice.audio.io import FileIO
from edgevoice.cli.talk_cmd import conversation_turns, summary_table
from edgevoice.runtime import events as ev
from edgevoice.runtime.cascade.session import SessionOptions
from edgevoice.runtime.events import Event
from edgevoice.runtime.loop import ESTIMATED_LIVE_KEY, SPEECH_END_ESTIMATED_LIVE_KEY, VIRTUAL_CLOCK_KEY

RATE = 16000


def answer(turn: int, at: float, reply: int, asr: float, llm: float, voice: float) -> list[Event]:
    """The events of one inline answer job started at ``at`` (all at one virtual instant)."""
    return [Event(at, ev.TRANSCRIPT, turn, {"text": "hi", "reply": reply, "compute_s": asr}),
            Event(at, ev.FIRST_TOKEN, turn, {"compute_s": llm / 2}),
            Event(at, ev.FIRST_SPEECH_CHUNK, turn, {"reply": reply, "compute_s": voice}),
            Event(at, ev.REPLY_TEXT, turn, {"text": "hello", "reply": reply, "compute_s": llm + voice + 1.0,
                                            "first_phrase_compute_s": llm})]


def test_an_answer_started_at_the_endpoint_adds_all_its_critical_compute():
    events = [Event(2.0, ev.USER_SPEECH_END, 1), *answer(1, 2.0, 7, asr=0.3, llm=0.4, voice=0.1),
              Event(2.032, ev.FIRST_AUDIO, 1)]
    assert ev.estimated_live_first_audio(events) == {1: pytest.approx(0.032 + 0.3 + 0.4 + 0.1)}


def test_a_speculative_answer_hides_compute_in_the_endpoint_silence():
    # Started 0.4 s before the endpoint: 0.8 s of compute, 0.4 s of it hidden by the silence.
    events = [*answer(1, 1.6, 3, asr=0.3, llm=0.4, voice=0.1), Event(2.0, ev.USER_SPEECH_END, 1),
              Event(2.0, ev.FIRST_AUDIO, 1)]
    assert ev.estimated_live_first_audio(events) == {1: pytest.approx(0.4)}
    events = [*answer(1, 1.0, 3, asr=0.3, llm=0.4, voice=0.1), Event(2.0, ev.USER_SPEECH_END, 1),
              Event(2.0, ev.FIRST_AUDIO, 1)]
    assert ev.estimated_live_first_audio(events) == {1: 0.0}  # all of it hidden: ready at the endpoint


def test_the_reply_that_played_counts_not_a_dropped_speculation():
    events = [*answer(1, 1.0, 1, asr=5.0, llm=5.0, voice=5.0),  # dropped: the user went on
              Event(3.0, ev.USER_SPEECH_END, 1), *answer(1, 3.0, 2, asr=0.2, llm=0.2, voice=0.1),
              Event(3.0, ev.FIRST_AUDIO, 1)]
    assert ev.estimated_live_first_audio(events) == {1: pytest.approx(0.5)}


def test_from_the_end_of_speech_the_endpoint_silence_is_added():
    # Speech ended at 1.79 s, the end-of-turn model took the turn 210 ms later; a speculative answer
    # started at 1.95 s needs 0.8 s: the endpoint figure is 0.75 s, the user waits 0.96 s.
    events = [*answer(1, 1.95, 3, asr=0.3, llm=0.4, voice=0.1),
              Event(2.0, ev.USER_SPEECH_END, 1, {"speech_end": 1.79}), Event(2.0, ev.FIRST_AUDIO, 1)]
    assert ev.estimated_live_first_audio(events) == {1: pytest.approx(0.75)}
    assert ev.estimated_live_after_speech_end(events) == {1: pytest.approx(0.96)}
    live = [Event(2.0, ev.USER_SPEECH_END, 1, {"speech_end": 1.79}), Event(2.6, ev.FIRST_AUDIO, 1),
            Event(3.5, ev.FIRST_AUDIO, 1)]  # a second reply in the same turn does not count
    assert ev.first_audio_after_speech_end(live) == {1: pytest.approx(0.81)}
    assert ev.first_audio_after_speech_end([Event(2.0, ev.USER_SPEECH_END, 1), Event(2.6, ev.FIRST_AUDIO, 1)]) == {}


def test_a_turn_without_an_answer_to_speech_gets_no_estimate():
    follow_up = [e for e in answer(1, 2.0, 9, 0.3, 0.4, 0.1) if e.kind != ev.TRANSCRIPT]  # a tool's follow-up
    events = [Event(1.0, ev.USER_SPEECH_END, 1), *follow_up, Event(2.0, ev.FIRST_AUDIO, 1)]
    assert ev.estimated_live_first_audio(events) == {}


@pytest.mark.slow
def test_file_mode_reports_the_estimate_in_summary_turns_and_events(cascade_package):
    recording = np.concatenate([np.zeros(8000, np.float32), espeak("What is the capital of France?"),
                                np.zeros(3 * RATE, np.float32)])
    agent = Agent(cascade_package.directory, options=SessionOptions(think_while_listening=False))
    ends = []
    agent.on(ev.SESSION_END, ends.append)
    session = agent.run(FileIO(recording, recording_rate=RATE))
    history = session.events.history()
    [end] = [e for e in history if e.kind == ev.USER_SPEECH_END]
    [first_audio] = [e for e in history if e.kind == ev.FIRST_AUDIO]
    [chunk] = [e for e in history if e.kind == ev.FIRST_SPEECH_CHUNK]
    played = chunk.data["reply"]  # the answer's three critical stages, tied by its id
    [transcript] = [e for e in history if e.kind == ev.TRANSCRIPT and e.data["reply"] == played]
    [reply] = [e for e in history if e.kind == ev.REPLY_TEXT and e.data["reply"] == played]
    critical = transcript.data["compute_s"] + reply.data["first_phrase_compute_s"] + chunk.data["compute_s"]
    assert first_audio.time == end.time  # on the virtual clock the engines took no time...
    assert critical > 0.05  # ...but they did: Whisper, the LLM's first phrase and the voice
    summary = session.summary()
    assert summary[ESTIMATED_LIVE_KEY] == pytest.approx(critical)  # no speculation: nothing hidden
    assert summary[VIRTUAL_CLOCK_KEY] == 0.0 and "first_audio_after_endpoint_s" not in summary
    waited = end.time - end.data["speech_end"]  # the endpoint silence: the user waits it too
    assert 0.15 < waited < 0.7 and summary[SPEECH_END_ESTIMATED_LIVE_KEY] == pytest.approx(critical + waited)
    assert ends[0].data[ESTIMATED_LIVE_KEY] == pytest.approx(critical)  # in the session_end event too
    [turn] = conversation_turns(history)  # talk --json
    assert turn[ESTIMATED_LIVE_KEY] == pytest.approx(critical, abs=1e-3) and turn[VIRTUAL_CLOCK_KEY] == 0.0
    labels = list(summary_table(summary).columns[0].cells)
    assert "first audio after endpoint (estimated live, compute included), s" in labels
    assert "first audio after endpoint (virtual clock, compute not included), s" in labels
    assert "first audio after end of speech (estimated live, endpoint silence and compute included), s" in labels
