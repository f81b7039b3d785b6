"""The gate in front of Freeze-Omni's listen path: Silero VAD as the reference server runs it, energy as
the fallback for packages without a `vad` component.

Reference: Freeze-Omni ``web/vad.py`` ``VAD.load_vad`` (silero ``VADIterator``: threshold 0.8,
min_silence_duration_ms 2000) and ``VAD.predict`` ('sl' at a VAD start, 'el' at its end), which
``bin/server.py`` ``send_pcm`` uses to decide what the LLM hears.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import espeak

from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.freeze_omni.head_policy import HeadTurnOptions, HeadTurnPolicy
from edgevoice.runtime.freeze_omni.pipeline import FreezeOmniPipeline
from edgevoice.runtime.freeze_omni.session import FoSessionOptions, FreezeOmniSession
from edgevoice.runtime.turns import Decision

RATE, OUT_RATE, CHUNK_S = 16000, 24000, 0.16
PIECES = 5  # Silero pieces of 512 samples in one 160 ms listen chunk


def chunks_of(policy: HeadTurnPolicy, per_chunk: list[list[float]], start: float = 0.0) -> list[Decision]:
    return [policy.gate_speech(start + (i + 1) * CHUNK_S, probs) for i, probs in enumerate(per_chunk)]


def test_vad_gate_opens_at_0_8_and_closes_after_2_s_under_0_65():
    """web/vad.py VAD.load_vad: VADIterator(threshold=0.8, min_silence_duration_ms=2000); silero's
    VADIterator.__call__ starts at prob >= threshold, times silence from the first prob < threshold - 0.15
    and ends only on such a prob once 2 s have passed; probs in between neither end nor reset it."""
    policy = HeadTurnPolicy()
    assert chunks_of(policy, [[0.79] * PIECES] * 3) == [Decision.NONE] * 3  # under 0.8: closed
    opened = policy.gate_speech(4 * CHUNK_S, [0.1, 0.1, 0.85, 0.9, 0.9])
    assert opened is Decision.USER_STARTED and policy.listening
    assert policy.speech_start == pytest.approx(3 * CHUNK_S + 2 * CHUNK_S / PIECES)  # the piece that crossed
    # 1.92 s under 0.65, then 0.7 (between the thresholds: silence goes on), then under 0.65 again.
    quiet = chunks_of(policy, [[0.3] * PIECES] * 12, start=4 * CHUNK_S)
    assert quiet == [Decision.NONE] * 12 and policy.gate_open
    assert policy.gate_speech(17 * CHUNK_S, [0.7] * PIECES) is Decision.NONE and policy.gate_open  # 2.08 s, no end
    assert policy.gate_speech(18 * CHUNK_S, [0.3] + [0.9] * 4) is Decision.DISMISS  # ended: the head never decided
    assert not policy.gate_open and not policy.listening  # the speech after the end opens at the next chunk
    # Speech at 0.8 again resets the silence: a second dialog needs its own 2 s.
    assert policy.gate_speech(19 * CHUNK_S, [0.95] * PIECES) is Decision.USER_STARTED
    chunks_of(policy, [[0.3] * PIECES] * 10 + [[0.9] * PIECES] + [[0.3] * PIECES] * 10, start=19 * CHUNK_S)
    assert policy.gate_open  # 1.6 s of quiet, speech, 1.6 s again: never 2 s in a row


def test_vad_close_time_is_an_option():
    policy = HeadTurnPolicy(HeadTurnOptions(vad_close_ms=480.0))
    policy.gate_speech(CHUNK_S, [0.9] * PIECES)
    assert chunks_of(policy, [[0.0] * PIECES] * 3, start=CHUNK_S)[-1] is Decision.DISMISS


@pytest.fixture(scope="module")
def package(tiny_package):
    return tiny_package


def music(seconds: float) -> np.ndarray:
    """A loud chord with a beat (no speech): the energy gate opens on it, Silero should not."""
    t = np.arange(int(seconds * RATE)) / RATE
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6, 440.0)) / 4
    return (0.3 * chord * (0.6 + 0.4 * np.sign(np.sin(2 * np.pi * 2 * t)))).astype(np.float32)


def run(package, audio: np.ndarray, **options) -> FreezeOmniSession:
    pipeline = FreezeOmniPipeline(package, max_new_tokens=4)
    io = FileIO(audio, recording_rate=RATE, mic_rate=RATE, speaker_rate=OUT_RATE)
    session = FreezeOmniSession(pipeline, io, FoSessionOptions(threaded=False, echo_cancellation=False, **options),
                                policy=NeverDecides())
    with io:
        session.run(len(audio) / RATE)
    session.close()
    return session


class NeverDecides(HeadTurnPolicy):
    """The random head's verdicts are noise: here only the gate decides."""

    def head(self, probs):
        return Decision.NONE


def test_tiny_package_carries_silero_and_gates_with_it(package):
    assert "vad" in package.components and package.config["pipeline"][0] == "vad"
    assert package.components["vad"].stream["chunk_samples"] == 512  # the cascade's Silero component
    speech = espeak("Could you tell me what the weather is like today?")
    gap = np.zeros(int(3.0 * RATE), np.float32)
    audio = np.concatenate([gap, music(3.0), gap, speech, gap])
    vad = run(package, audio)
    starts = vad.events.history(ev.USER_SPEECH_START)
    speech_at = (2 * len(gap) + 3.0 * RATE) / RATE
    assert len(starts) == 1 and speech_at <= starts[0].data["speech_start"] <= speech_at + 0.5  # the words, not the music
    assert not vad.events.history(ev.WARNING)
    energy = run(package, audio, gate="energy")
    opened = [e.data["speech_start"] for e in energy.events.history(ev.USER_SPEECH_START)]
    assert len(opened) == 2 and opened[0] < 3.2  # the energy gate also opens on the music


def test_package_without_vad_falls_back_to_energy_with_one_notice(package):
    without = replace(package, components={k: v for k, v in package.components.items() if k != "vad"})
    pipeline = FreezeOmniPipeline(without, max_new_tokens=4)
    assert pipeline.vad is None
    audio = np.concatenate([np.zeros(RATE, np.float32), music(1.0), np.zeros(3 * RATE, np.float32)])
    io = FileIO(audio, recording_rate=RATE, mic_rate=RATE, speaker_rate=OUT_RATE)
    session = FreezeOmniSession(pipeline, io, FoSessionOptions(threaded=False, echo_cancellation=False),
                                policy=NeverDecides())
    with io:
        session.run(len(audio) / RATE)
    notices = session.events.history(ev.WARNING)
    assert len(notices) == 1 and "energy" in notices[0].data["error"] and "\n" not in notices[0].data["error"]
    assert len(session.events.history(ev.USER_SPEECH_START)) == 1  # energy opened the gate
    with pytest.raises(Exception, match="no vad component"):
        FreezeOmniSession(pipeline, FileIO(audio, recording_rate=RATE, mic_rate=RATE, speaker_rate=OUT_RATE),
                          FoSessionOptions(threaded=False, gate="vad"))
