"""VocalNet thinks while listening: the reply starts in the user's end-of-turn silence.

The encoder attends over the whole turn, so the reply cannot start chunk by chunk while the user
speaks; it starts speculatively ``speculate_after_ms`` into their silence, as the cascade's answer
does (``edgevoice/runtime/cascade/session.py``, ``DuplexSession._think_while_listening`` /
``_take_turn`` / ``_drop_speculation``), is released when the endpoint takes the turn with the
same audio, and is dropped without a trace when the user goes on. Each turn is answered from a
fresh prompt, as VocalNet's reference does (``omni_speech/infer/vocalnet.py``, ``VocalNetModel``
keeps no history between calls), so a dropped reply has no state to roll back.

Random weights (vocalnet-tiny): the replies mean nothing, so these compare replies sample for
sample on the unpaced virtual clock, where the session is deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import espeak

from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import Event, EventBus
from edgevoice.runtime.turns import TurnOptions
from edgevoice.runtime.vocalnet.pipeline import VocalNetPipeline
from edgevoice.runtime.vocalnet.session import (
    FIRST_PCM,
    SPECULATION,
    STAGES,
    VnSessionOptions,
    VocalNetSession,
)

RATE, OUT_RATE = 16000, 24000


@pytest.fixture(scope="module")
def pipeline(tiny_package) -> VocalNetPipeline:
    return VocalNetPipeline(tiny_package, max_new_tokens=12)


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    """One sentence said without a pause."""
    return espeak("The quick brown fox jumps over the lazy dog.")


@pytest.fixture(scope="module")
def halves() -> tuple[np.ndarray, np.ndarray]:
    """One sentence said in two parts (espeak leaves ~0.3 s of silence after each)."""
    return espeak("The quick brown fox"), espeak("jumps over the lazy dog.")


def utterance(*parts: np.ndarray, pause_s: float = 0.2) -> np.ndarray:
    """Half a second of silence, the parts with ``pause_s`` more silence between them, then 5 s for the reply."""
    gap = np.zeros(int(pause_s * RATE), np.float32)
    joined = [parts[0]] + [x for part in parts[1:] for x in (gap, part)]
    return np.concatenate([np.zeros(RATE // 2, np.float32), *joined, np.zeros(5 * RATE, np.float32)])


class HeardTurns:
    """The pipeline, recording the audio of every reply it is asked for (speculations included)."""

    def __init__(self, pipeline: VocalNetPipeline):
        self.pipeline, self.turns = pipeline, []

    def __getattr__(self, name: str):
        return getattr(self.pipeline, name)

    def respond(self, audio: np.ndarray):
        self.turns.append(np.array(audio))
        return self.pipeline.respond(audio)


def converse(pipeline: VocalNetPipeline | HeardTurns, audio: np.ndarray,
             speculate: bool) -> tuple[list[Event], FileIO, VocalNetSession]:
    """The session inline on the unpaced virtual clock until the recording is over and the agent idle."""
    io = FileIO(audio, recording_rate=RATE, mic_rate=RATE, speaker_rate=OUT_RATE)
    options = VnSessionOptions(threaded=False, echo_cancellation=False, think_while_listening=speculate)
    session = VocalNetSession(pipeline, io, options, events=EventBus())
    io.start()
    while session.step() and not (io.recording_finished and session.idle):
        pass
    return session.events.history(), io, session


def reply_audio(history: list[Event], io: FileIO, session: VocalNetSession) -> np.ndarray:
    """What the speaker played of the (only) reply, from its first sound, sample for sample."""
    assert session.reply_gaps == 0  # played without a gap, so the played audio is the reply's PCM
    (done,) = [e for e in history if e.kind == ev.AGENT_DONE]
    played = io.played()
    start = int(np.flatnonzero(played)[0])
    return played[start:start + done.data["samples"]]


def of_kind(history: list[Event], kind: str) -> list[Event]:
    return [e for e in history if e.kind == kind]


def test_released_speculation_plays_the_reply_made_without_it(pipeline, sentence):
    audio = utterance(sentence)
    heard_off, heard_on = HeardTurns(pipeline), HeardTurns(pipeline)
    off, io_off, s_off = converse(heard_off, audio, speculate=False)
    on, io_on, s_on = converse(heard_on, audio, speculate=True)
    assert len(heard_on.turns) == 1 and np.array_equal(heard_on.turns[0], heard_off.turns[0])
    assert not of_kind(off, SPECULATION)
    assert [e.data["stage"] for e in of_kind(on, SPECULATION)] == ["start"]
    assert [e.data["speculative"] for e in of_kind(on, ev.TURN_TAKEN)] == [True]
    assert np.array_equal(reply_audio(on, io_on, s_on), reply_audio(off, io_off, s_off))
    assert of_kind(on, ev.REPLY_TEXT)[0].data["text"] == of_kind(off, ev.REPLY_TEXT)[0].data["text"]
    # Nothing plays before the turn is taken, and with the head start it plays sooner.
    taken = of_kind(on, ev.TURN_TAKEN)[0].time
    assert not np.any(io_on.played()[: int(taken * OUT_RATE)])
    assert of_kind(on, ev.FIRST_AUDIO)[0].time < of_kind(off, ev.FIRST_AUDIO)[0].time


def test_released_stages_come_after_the_turn_clamped_to_the_decision(pipeline, sentence):
    """The speculation's stage events are held until the turn is taken; those it reached before
    the decision say so (``after_turn_s`` 0.0, ``ahead_s`` > 0)."""
    history, _, _ = converse(pipeline, utterance(sentence), speculate=True)
    order = [e.kind for e in history]
    start = order.index(SPECULATION)
    taken = order.index(ev.TURN_TAKEN)
    assert start < taken
    stages = [e for e in history if e.kind in STAGES]
    assert [e.kind for e in stages] == list(STAGES)
    assert all(order.index(kind) > taken for kind in STAGES)
    assert all(e.data["speculative"] for e in stages)
    ahead = [e for e in stages if "ahead_s" in e.data]
    assert ahead, "the head start reached no stage before the decision"
    assert all(e.data["after_turn_s"] == 0.0 and e.data["ahead_s"] > 0 for e in ahead)
    pcm = of_kind(history, FIRST_PCM)[0]
    assert pcm.data["job_start"] == of_kind(history, SPECULATION)[0].time < history[taken].time


def test_speculation_dropped_when_the_user_goes_on_leaves_no_trace(pipeline, halves):
    """A pause mid-sentence starts a speculation; the second half cancels it. One reply, for the
    whole sentence: the same audio answered and the same reply played as without speculation."""
    audio = utterance(*halves)
    heard_on, heard_off = HeardTurns(pipeline), HeardTurns(pipeline)
    on, io_on, s_on = converse(heard_on, audio, speculate=True)
    stages = [(e.data["stage"], e.data.get("reason")) for e in of_kind(on, SPECULATION)]
    assert stages == [("start", None), ("drop", "the user went on"), ("start", None)]
    assert of_kind(on, SPECULATION)[1].data["compute_s"] > 0  # it had made engine calls before it was cancelled
    assert len(of_kind(on, ev.TURN_TAKEN)) == 1 and len(of_kind(on, ev.REPLY_TEXT)) == 1
    released = of_kind(on, SPECULATION)[2].data["reply"]
    assert [e.data["reply"] for e in on if e.kind in STAGES + (ev.REPLY_TEXT,)] == [released] * 5
    taken = of_kind(on, ev.TURN_TAKEN)[0].time
    assert not np.any(io_on.played()[: int(taken * OUT_RATE)])  # the dropped reply never played

    off, io_off, s_off = converse(heard_off, audio, speculate=False)
    (answered,) = heard_off.turns
    dropped, final = heard_on.turns
    assert np.array_equal(final, answered)  # the released reply answers the whole sentence
    assert dropped.size < answered.size - RATE and np.array_equal(dropped, answered[: dropped.size])
    assert np.array_equal(reply_audio(on, io_on, s_on), reply_audio(off, io_off, s_off))


def test_speculation_shortens_end_of_speech_to_first_audio(pipeline, sentence):
    """Compute-inclusive estimate (``events.estimated_live_after_speech_end``): without speculation
    the user waits the endpoint silence plus the engines' time to the first PCM; with it, the
    engines ran in the silence, so only what they did not finish by the endpoint is added."""
    audio = utterance(sentence)
    waits = {}
    for speculate in (False, True):
        history, _, _ = converse(pipeline, audio, speculate=speculate)
        (wait,) = ev.estimated_live_after_speech_end(history).values()
        (end,) = of_kind(history, ev.USER_SPEECH_END)
        silence = end.time - end.data["speech_end"]
        compute = of_kind(history, FIRST_PCM)[0].data["compute_s"]
        waits[speculate] = wait
        if not speculate:
            assert wait == pytest.approx(silence + compute)
    assert waits[True] < waits[False]


def test_job_estimate_follows_the_reply_job():
    """``events._job_first_audio``: the first PCM is ready ``compute_s`` after ``job_start`` and
    plays no sooner than the endpoint."""
    def turn(job_start: float, compute_s: float, pcm_at: float, audio_at: float) -> list[Event]:
        return [Event(1.0, ev.USER_SPEECH_END, 1, {"speech_end": 0.4}),
                Event(pcm_at, FIRST_PCM, 1, {"job_start": job_start, "compute_s": compute_s}),
                Event(audio_at, ev.FIRST_AUDIO, 1, {})]

    assert ev.estimated_live_first_audio(turn(1.0, 0.25, 1.1, 1.1)) == {1: pytest.approx(0.25)}
    assert ev.estimated_live_first_audio(turn(0.7, 0.25, 1.0, 1.0)) == {1: pytest.approx(0.0)}  # hidden
    assert ev.estimated_live_first_audio(turn(0.7, 0.5, 1.0, 1.05)) == {1: pytest.approx(0.25)}
    assert ev.estimated_live_after_speech_end(turn(0.7, 0.5, 1.0, 1.0)) == {1: pytest.approx(0.8)}


def test_speculating_after_the_endpoint_is_refused():
    with pytest.raises(ValueError, match="speculate_after_ms"):
        VnSessionOptions(turn=TurnOptions(endpoint_silence_ms=150.0))
    VnSessionOptions(turn=TurnOptions(endpoint_silence_ms=150.0), think_while_listening=False)
