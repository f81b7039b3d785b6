"""Whole conversations on the virtual clock with the real cascade engines."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import espeak
from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.pipelines.cascade import CascadePipeline
from edgevoice.runtime.session import DuplexSession, SessionOptions

pytestmark = pytest.mark.slow
RATE = 16000


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def converse(package, parts: list[np.ndarray], extra_s: float = 6.0, **options):
    """The conversation on an unpaced virtual clock, stages inline: deterministic."""
    recording = np.concatenate(parts)
    io = FileIO(recording, recording_rate=RATE, mic_rate=RATE, speaker_rate=22050)
    session = DuplexSession(CascadePipeline(package), io, SessionOptions(threaded=False, **options))
    with io:
        session.run(len(recording) / RATE + extra_s)
    session.close()
    return session, io


def texts(session: DuplexSession, kind: str) -> list[str]:
    return [e.data["text"] for e in session.events.history(kind)]


def audible(io: FileIO, start_s: float, end_s: float) -> float:
    """Seconds of non-silent agent audio between two session times."""
    played = io.played()[int(start_s * io.speaker_rate) : int(end_s * io.speaker_rate)]
    blocks = played[: played.size // 220 * 220].reshape(-1, 220)
    return float(np.count_nonzero(np.abs(blocks).max(axis=1) > 1e-3) * 0.01)


def test_two_questions_two_answers(cascade_package):
    q1, q2 = espeak("What is the capital of France?"), espeak("Can you tell me a fun fact about cats?")
    session, io = converse(cascade_package, [silence(0.5), q1, silence(5.0), q2, silence(1.0)])
    transcripts, replies = texts(session, ev.TRANSCRIPT), texts(session, ev.REPLY_TEXT)
    assert len(transcripts) == 2 and "France" in transcripts[0] and "cat" in transcripts[1].lower()
    assert len(replies) == 2 and "Paris" in replies[0] and replies[1]
    answer_1 = (0.5 + len(q1) / RATE, 0.5 + (len(q1) + len(silence(5.0))) / RATE)
    assert audible(io, *answer_1) > 1.0  # the first answer was played before the second question
    assert len(session.events.history(ev.AGENT_DONE)) == 2


def test_barge_in_stops_audio_within_150_ms(cascade_package):
    # Headset case (no echo path): WebRTC's echo suppressor also mutes the user's first word while
    # the agent talks (double talk), which delays the onset by ~1 s; see the runtime issue notes.
    q1, interrupt = espeak("What is the capital of France?"), espeak("Wait, tell me about dogs instead.")
    lead = silence(0.5)
    gap = silence(1.3)  # endpoint (0.6 s) + about 0.7 s into the answer
    session, io = converse(cascade_package, [lead, q1, gap, interrupt, silence(1.0)], echo_cancellation=False)
    onset = (len(lead) + len(q1) + len(gap)) / RATE + first_voiced(interrupt) / RATE
    pauses = [e for e in session.events.history(ev.BARGE_IN)]
    assert pauses and onset <= pauses[0].time <= onset + 0.15
    assert audible(io, onset + 0.15, onset + len(interrupt) / RATE - 0.1) == 0.0  # silent while the user speaks
    assert session.events.history(ev.CANCEL_DONE)
    transcripts = texts(session, ev.TRANSCRIPT)
    assert "dog" in transcripts[-1].lower() and len(texts(session, ev.REPLY_TEXT)) == 2


@pytest.mark.parametrize("echo_cancellation", [True, False])
def test_backchannel_does_not_stop_the_answer(cascade_package, echo_cancellation):
    q1 = espeak("Can you tell me a fun fact about cats?")
    mhm = espeak("mhm")
    start = first_voiced(mhm)
    mhm = mhm[start : start + int(0.35 * RATE)]  # a real "mhm" is ~300 ms; espeak's trails on
    parts = [silence(0.5), q1, silence(1.5), mhm, silence(12.0)]
    session, io = converse(cascade_package, parts, echo_cancellation=echo_cancellation)
    assert not session.events.history(ev.CANCEL_DONE)
    if not echo_cancellation:  # heard: the agent paused and resumed (with echo cancellation it is not even heard)
        assert session.events.history(ev.BACKCHANNEL)
    assert len(session.events.history(ev.AGENT_DONE)) == 1  # the answer was played to its end
    assert len(texts(session, ev.TRANSCRIPT)) == 1


def first_voiced(audio: np.ndarray) -> int:
    return int(np.argmax(np.abs(audio) > 0.02))
