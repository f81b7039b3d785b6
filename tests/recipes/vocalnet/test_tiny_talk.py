"""`vocalnet-tiny` end to end: `edgevoice talk --input` and the session's streaming and barge-in.

Random weights: the reply means nothing, so these check mechanics -- the VAD takes the turn, the
latency stages come in order (end of turn -> first text token -> first speech token -> first mel
chunk -> first PCM -> first audio at the speaker), audio is streamed chunk by chunk, and a
barge-in cancels the reply's remaining engine calls and its queued audio. The turn-taking rules
are the runtime's (``edgevoice/runtime/turns.py``); VocalNet's reference (``vocalnet_streaming.py``)
is turn-based and streams its vocoder as ``engines.FlowStream`` / ``vocoder_stream.HiftStream`` do.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import EventBus
from edgevoice.runtime.vocalnet.pipeline import VocalNetPipeline
from edgevoice.runtime.vocalnet.session import (
    FIRST_MEL_CHUNK,
    FIRST_PCM,
    VnSessionOptions,
    VocalNetSession,
)

STAGES = [ev.TURN_TAKEN, ev.FIRST_TOKEN, ev.FIRST_SPEECH_TOKEN, FIRST_MEL_CHUNK, FIRST_PCM, ev.FIRST_AUDIO]


@pytest.fixture(scope="module")
def question(speech_16k) -> np.ndarray:
    """Half a second of silence, one spoken sentence, then silence for the reply."""
    sentence = speech_16k[8000:8000 + 48000]  # the first sentence of the shared speech fixture
    return np.concatenate([np.zeros(8000, np.float32), sentence, np.zeros(16000 * 6, np.float32)])


def kinds(history) -> list[str]:
    return [e.kind for e in history]


def test_talk_answers_a_recording_with_streamed_speech(tiny_package, question, tmp_path):
    wav, said, events = tmp_path / "q.wav", tmp_path / "said.wav", tmp_path / "events.jsonl"
    soundfile.write(wav, question, 16000)
    result = subprocess.run([sys.executable, "-m", "edgevoice.cli.main", "talk", "--package", str(tiny_package.directory),
                             "--input", str(wav), "--output", str(said), "--events", str(events),
                             "--max-new-tokens", "12"], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    history = [json.loads(line) for line in events.read_text().splitlines()]
    order = [e["kind"] for e in history if e["turn"] == 1]
    positions = [order.index(kind) for kind in STAGES]
    assert positions == sorted(positions), order  # each latency stage after the one before
    marks = {e["kind"]: e["data"]["after_turn_s"] for e in history if "after_turn_s" in e["data"]}
    assert [marks[k] for k in STAGES[1:-1]] == sorted(marks[k] for k in STAGES[1:-1])
    assert ev.REPLY_TEXT in order and order.index(ev.AGENT_DONE) > order.index(ev.FIRST_AUDIO)
    audio, rate = soundfile.read(said, dtype="float32")
    assert rate == 24000
    taken = next(e["time"] for e in history if e["kind"] == ev.TURN_TAKEN)
    assert not np.any(audio[: int(taken * rate)])  # nothing is said before the turn is taken
    assert np.abs(audio[int(taken * rate):]).max() > 0.0  # then the reply plays


def converse_inline(package, audio: np.ndarray, max_new_tokens: int) -> list:
    """The session on the unpaced virtual clock, one engine call per frame, until the recording is
    over and the agent idle; returns its events."""
    pipeline = VocalNetPipeline(package, max_new_tokens=max_new_tokens)
    io = FileIO(audio, recording_rate=16000, mic_rate=16000, speaker_rate=24000)
    session = VocalNetSession(pipeline, io, VnSessionOptions(threaded=False, inline_steps=1, echo_cancellation=False),
                              events=EventBus())
    io.start()
    while session.step() and not (io.recording_finished and session.idle):
        pass
    return session.events.history()


def test_speech_streams_before_the_reply_is_written(tiny_package, question):
    """With one engine call per frame, the first PCM reaches the speaker while the LLM still writes."""
    history = converse_inline(tiny_package, question, max_new_tokens=40)
    order = kinds(history)
    assert order.index(ev.FIRST_AUDIO) < order.index(ev.REPLY_TEXT)  # audio played before the text was complete
    chunks = [e for e in history if e.kind == ev.AGENT_DONE]
    assert chunks and chunks[0].data["samples"] > 0


def test_barge_in_cancels_every_stage(tiny_package, question):
    """A second utterance over the reply: paused, then cancelled; the first reply stops being made."""
    interruption = question[8000:8000 + 32000]
    turn_end = 8000 + 48000 + int(0.9 * 16000)  # the reply is being made by then
    audio = np.concatenate([question[:turn_end], interruption, np.zeros(16000 * 4, np.float32)])
    history = converse_inline(tiny_package, audio, max_new_tokens=200)
    barge = [e.data["stage"] for e in history if e.kind == ev.BARGE_IN]
    assert barge[:2] == ["pause", "cancel"], barge
    cancel = next(e for e in history if e.kind == ev.CANCEL_DONE)
    assert cancel.turn == 1
    first = [e.kind for e in history if e.turn == 1]
    assert ev.REPLY_TEXT not in first and ev.AGENT_DONE not in first  # its LLM and speech stages stopped
    assert cancel.data["written_samples"] > 0  # it had spoken before it was cut off
    assert [e.turn for e in history if e.kind == ev.TURN_TAKEN] == [1, 2]  # the interruption is answered
    assert ev.AGENT_DONE in [e.kind for e in history if e.turn == 2]
