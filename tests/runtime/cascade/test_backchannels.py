"""Agent backchannels in whole conversations on the virtual clock.

VAD, Whisper, the echo canceller and the voice are the package's own; the language model is
scripted (what it answers does not matter here), and so is the end-of-turn model where one is
used: Smart Turn calls espeak's flat "... travel to the city and" complete (p = 0.95, measured),
so the real one would end the turn in the first pause; how it scores pauses is its own test
(tests/runtime/cascade/test_turn_model.py). The user talks at length with thinking pauses; the agent may say a quiet "mhm" in
them, and must still answer exactly once, at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import espeak, room_response
from scripted import install

from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.backchannel import BackchannelOptions
from edgevoice.runtime.cascade.pipeline import CascadePipeline
from edgevoice.runtime.cascade.session import DuplexSession, SessionOptions

pytestmark = pytest.mark.slow
RATE = 16000
REPLY = "Take the train, it is quicker."


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def trimmed(audio: np.ndarray) -> np.ndarray:
    voiced = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[voiced[0] : voiced[-1] + 1]


def long_turn(pause_s: float) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """Three unfinished-sounding sentences (~2 s each) with thinking pauses, then the question;
    returns the recording's parts and the (start, end) of every stretch of the user's speech."""
    sentences = ["So next week I have to travel to the city and",
                 "I was thinking about taking the train or maybe",
                 "driving my own car because of all the luggage,",
                 "which one would you choose?"]
    parts, spans, t = [silence(0.5)], [], 0.5
    for index, text in enumerate(sentences):
        speech = trimmed(espeak(text))
        spans.append((t, t + len(speech) / RATE))
        t += len(speech) / RATE + (pause_s if index < len(sentences) - 1 else 0.0)
        parts += [speech, silence(pause_s)] if index < len(sentences) - 1 else [speech]
    return parts + [silence(1.5)], spans


class ScriptedTurnModel:
    """Stands in for Smart Turn: "incomplete" until the user's last sentence is over, then "complete"."""

    sample_rate, window_samples = RATE, 8 * RATE

    def __init__(self, clock, done_after: float):
        self.clock, self.done_after = clock, done_after

    def probability(self, pcm: np.ndarray) -> float:
        return 0.9 if self.clock.now() > self.done_after else 0.1


def converse(package, parts: list[np.ndarray], echo: bool, done_after: float | None = None,
             **options) -> tuple[DuplexSession, FileIO]:
    """Inline on the unpaced virtual clock; ``done_after``: the scripted end-of-turn model's cut."""
    pipeline = CascadePipeline(package)
    install(pipeline, lambda messages: REPLY)
    recording = np.concatenate(parts)
    echo_path = room_response(0.05) if echo else None
    io = FileIO(recording, recording_rate=RATE, mic_rate=RATE, speaker_rate=22050, echo_path=echo_path)
    if done_after is not None:
        pipeline.turn_model = ScriptedTurnModel(io.clock, done_after)
    session = DuplexSession(pipeline, io, SessionOptions(threaded=False, **options))
    with io:
        session.run(len(recording) / RATE + 6.0)
    session.close()
    return session, io


def backchannels(session: DuplexSession, stage: str = "start") -> list:
    return [e for e in session.events.history(ev.AGENT_BACKCHANNEL) if e.data["stage"] == stage]


def assert_one_answer_at_the_end(session: DuplexSession, spans: list[tuple[float, float]]) -> None:
    assert len(session.events.history(ev.TURN_TAKEN)) == 1
    [taken] = session.events.history(ev.TURN_TAKEN)
    assert taken.time > spans[-1][1]  # only once the user was done
    assert len(session.events.history(ev.AGENT_DONE)) == 1
    assert not session.events.history(ev.BARGE_IN) and not session.events.history(ev.CANCEL_DONE)
    # One user message and one reply: a backchannel leaves no trace in the conversation.
    assert [m["role"] for m in session.agent.history] == ["user", "assistant"]
    assert session.agent.history[1]["content"] == REPLY
    assert "travel" in session.agent.history[0]["content"].lower()


def played_during(io: FileIO, start_s: float, end_s: float) -> float:
    """Peak of the agent's audio between two session times."""
    played = io.played()[int(start_s * io.speaker_rate) : int(end_s * io.speaker_rate)]
    return float(np.abs(played).max()) if played.size else 0.0


def test_a_long_turn_gets_a_backchannel_and_one_answer_on_open_speakers(cascade_package):
    """The end-of-turn model calls the pauses incomplete; the echo canceller takes the clip as reference."""
    parts, spans = long_turn(pause_s=0.8)
    options = BackchannelOptions(min_speech_s=2.5, every_s=4.0)
    session, io = converse(cascade_package, parts, echo=True, done_after=spans[-1][1], echo_cancellation=True,
                           backchannels=options)
    said = backchannels(session)
    assert said, "no backchannel in a ~8 s turn with three thinking pauses"
    assert_one_answer_at_the_end(session, spans)
    for event in said:
        assert event.data["text"] in options.phrases
        assert any(end < event.time < end + 0.8 for _, end in spans[:-1])  # in a pause, never over speech
        assert event.time > spans[1][0]  # after the minimum speech: not in the first pause
        clip_peak = played_during(io, event.time, event.time + event.data["duration_s"])
        assert 0.0 < clip_peak < 0.5  # heard, and quiet
    assert not backchannels(session, "cut")  # the canceller kept its echo from sounding like the user
    times = [e.time for e in said]
    assert all(b - a > options.every_s for a, b in zip(times, times[1:]))  # the rate cap
    assert len(session.events.history(ev.USER_SPEECH_START)) == 1  # its echo opened no turn


def test_without_the_option_nothing_changes(cascade_package):
    parts, spans = long_turn(pause_s=0.8)
    session, io = converse(cascade_package, parts, echo=True, done_after=spans[-1][1], echo_cancellation=True)
    assert not session.events.history(ev.AGENT_BACKCHANNEL)
    assert_one_answer_at_the_end(session, spans)
    assert played_during(io, 0.0, spans[-1][1]) == 0.0  # not a sound while the user held the floor


def test_vad_pauses_without_echo_cancellation(cascade_package):
    """No end-of-turn model: a 300 ms VAD pause is the cue (pauses of 550 ms stay under the 600 ms
    endpoint). No canceller either: the session is deaf for the clip and its echo, so the agent's
    own "mhm" through the room neither opens a turn nor reaches the transcript. (The reply itself,
    uncancelled in the same room, interrupts itself: test_session.py's control; so only the user's
    turn is checked here.)"""
    parts, spans = long_turn(pause_s=0.55)
    # At full level: loud enough that the VAD takes its echo for speech when the session listens.
    options = BackchannelOptions(min_speech_s=2.5, every_s=4.0, gain_db=0.0)
    session, _ = converse(cascade_package, parts, echo=True, echo_cancellation=False,
                           semantic_endpointing=False, backchannels=options)
    said = backchannels(session)
    assert said
    # Its own echo is not the user resuming (measured without the deaf window: cut after ~0.15 s).
    assert not backchannels(session, "cut")
    for event in said:
        assert any(end < event.time < end + 0.55 for _, end in spans[:-1])  # in a pause
    taken = session.events.history(ev.TURN_TAKEN)[0]
    assert taken.time > spans[-1][1]  # the turn ended after the last sentence, not in a pause
    before = [e for e in session.events.history() if e.time <= taken.time]
    assert [e.kind for e in before].count(ev.USER_SPEECH_START) == 1
    assert not any(e.kind in (ev.BARGE_IN, ev.TRANSCRIPT) and not e.data.get("speculative") for e in before)
    assert session.agent.history[0]["role"] == "user" and "travel" in session.agent.history[0]["content"].lower()
    assert not any(word in session.agent.history[0]["content"].lower() for word in ("mhm", "i see"))


def test_the_user_resuming_cuts_the_backchannel(cascade_package):
    """A pause just long enough for the cue: the user is back while the clip plays, and it stops."""
    parts, spans = long_turn(pause_s=0.45)
    # The VAD cue at 300 ms of silence; the clip is longer than the 150 ms left of the pause.
    options = BackchannelOptions(phrases=("I see what you mean",), min_speech_s=2.5, every_s=4.0)
    session, io = converse(cascade_package, parts, echo=False, echo_cancellation=True,
                           semantic_endpointing=False, backchannels=options)
    [started, *_] = backchannels(session)
    [cut, *_] = backchannels(session, "cut")
    resumed = next(start for start, _ in spans if start > started.time)
    assert started.data["duration_s"] > resumed - started.time + 0.2  # it would have run over the user
    # Cut at their onset: the VAD's ~0.1 s, plus the canceller's suppressor holding back the start of
    # double talk (the clip is its reference); measured 0.21 s.
    assert resumed <= cut.time <= resumed + 0.3
    assert played_during(io, cut.time + 0.05, resumed + 0.5) == 0.0  # and silent from then on
    assert_one_answer_at_the_end(session, spans)
