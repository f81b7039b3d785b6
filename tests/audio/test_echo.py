"""Echo cancellation on a simulated room: the agent's speech through a decaying random impulse
response and a 40 ms delay, the user talking over its end, low noise."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import espeak, room_response

from edgevoice.audio.clock import VirtualClock
from edgevoice.audio.echo import EchoCanceller, measure_latency
from edgevoice.audio.io import FileIO, read_aligned
from edgevoice.errors import EdgevoiceError, MissingDependencyError

RATE = 16000
USER_STARTS = 7 * RATE  # the user starts talking while the agent is still speaking (double talk)
CONVERGED = 3 * RATE  # ERLE is measured after AEC3 had 3 s to learn the room
FRAME = RATE // 50  # 20 ms analysis frames


@pytest.fixture(scope="module")
def agent_speech() -> np.ndarray:
    return np.concatenate([
        espeak("Hello, I am your kitchen assistant. I can set timers, turn on the lights and read you the news."),
        espeak("The weather tomorrow will be sunny with a light breeze from the west."),
    ])


@pytest.fixture(scope="module")
def room(agent_speech):
    """(mic, reference, user): what the mic hears, what the speaker played, the clean user speech."""
    rng = np.random.default_rng(2)
    agent, user = agent_speech, espeak("Stop, please turn off the radio.")
    length = len(agent) + 2 * RATE
    reference = np.zeros(length, dtype=np.float32)
    reference[: len(agent)] = agent
    # 40 ms: speaker-to-mic path plus device buffering.
    echo = np.convolve(reference, room_response(0.04))[:length]
    near = np.zeros(length, dtype=np.float32)
    near[USER_STARTS : USER_STARTS + len(user)] = user[: length - USER_STARTS]
    noise = rng.standard_normal(length) * 10 ** (-55 / 20)
    mic = (echo + near + noise).astype(np.float32)
    return mic, reference, near


def cancel_in_random_chunks(mic: np.ndarray, reference: np.ndarray, seed: int = 0) -> np.ndarray:
    canceller, rng, pieces, start = EchoCanceller(RATE), np.random.default_rng(seed), [], 0
    while start < len(mic):
        size = int(rng.integers(1, 700))  # device-sized blocks, never whole 10 ms frames
        pieces.append(canceller.process(mic[start : start + size], reference[start : start + size]))
        start += size
    return np.concatenate(pieces)


def far_end_only_frames(reference: np.ndarray, near: np.ndarray, end: int) -> list[int]:
    """Starts of 20 ms frames after convergence with agent speech (or its echo tail) and no user speech."""
    starts = []
    for start in range(CONVERGED, end - FRAME, FRAME):
        recent_far = reference[max(0, start - 2400) : start + FRAME]  # 150 ms: delay + room tail
        if np.sum(recent_far**2) > 1e-3 and not near[start : start + FRAME].any():
            starts.append(start)
    return starts


def erle_db(mic: np.ndarray, cleaned: np.ndarray, frames: list[int]) -> float:
    before = sum(float(np.sum(mic[s : s + FRAME] ** 2)) for s in frames)
    after = sum(float(np.sum(cleaned[s : s + FRAME] ** 2)) for s in frames)
    return 10 * np.log10(before / after)


def test_echo_is_removed_after_convergence(room):
    mic, reference, near = room
    cleaned = cancel_in_random_chunks(mic, reference)
    frames = far_end_only_frames(reference, near, len(cleaned))
    assert len(frames) > 100  # > 2 s of far-end-only audio measured
    erle = erle_db(mic, cleaned, frames)
    print(f"ERLE over far-end-only frames: {erle:.1f} dB")  # measured 25.7 dB
    assert erle >= 20.0


def test_an_unrelated_reference_removes_nothing(room):
    # The control: with silence as the reference the same measurement shows no echo removal, so
    # the 20 dB above come from cancelling the played signal, not from suppressing everything.
    mic, reference, near = room
    cleaned = cancel_in_random_chunks(mic, np.zeros_like(reference))
    assert abs(erle_db(mic, cleaned, far_end_only_frames(reference, near, len(cleaned)))) < 3.0


def test_user_speech_survives_double_talk_and_stays_aligned(room):
    # Correlation at lag 0 with the clean user speech, while the agent's echo is still loud:
    # the raw mic scores 0.95 (the echo is the only difference), the cancelled output 0.87.
    # 0.8 leaves room for platform differences in AEC3's floating point; a canceller that
    # suppressed the user, or output shifted by even a few samples, falls far below it
    # (a 1 ms shift scores ~0.0 on this speech).
    mic, reference, near = room
    cleaned = cancel_in_random_chunks(mic, reference)
    span = slice(USER_STARTS, min(USER_STARTS + int(np.flatnonzero(near).max() - USER_STARTS), len(cleaned)))
    correlation = float(np.corrcoef(cleaned[span], near[span])[0, 1])
    print(f"near-end correlation: {correlation:.3f} (raw mic {np.corrcoef(mic[span], near[span])[0, 1]:.3f})")
    assert correlation >= 0.8
    shifted = float(np.corrcoef(cleaned[span.start + 16 : span.stop], near[span.start : span.stop - 16])[0, 1])
    assert shifted < 0.5  # the alignment test above is sharp


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    from edgevoice.export import export_package

    from edgevoice.runtime import VadPipeline

    package = export_package(model="silero-vad", target="cpu", out=tmp_path_factory.mktemp("vad")).directory
    return VadPipeline(package)


def test_the_agent_does_not_barge_in_on_itself(room, vad):
    # Silero VAD on the raw mic hears the agent's own echo from the first word on (the agent
    # would interrupt itself); on the cancelled signal it hears only the user. Measured: raw mic
    # segments from 0.07 s, cancelled 7.11-7.42 s and 7.62-8.96 s, clean user 7.04-7.45 s and 7.62-9.02 s.
    mic, reference, _ = room
    cleaned = cancel_in_random_chunks(mic, reference)
    user_starts = USER_STARTS / RATE
    raw_segments = vad.segments(mic[: len(cleaned)], RATE)
    assert raw_segments and raw_segments[0].start < 1.0  # the control: without AEC the echo is "speech"
    segments = vad.segments(cleaned, RATE)
    assert segments, "the user's speech was cancelled along with the echo"
    assert all(s.start >= user_starts for s in segments), [(s.start, s.end) for s in segments]
    assert segments[0].start < user_starts + 0.25  # the user's barge-in is still heard promptly


def test_chunking_does_not_change_the_output(room):
    mic, reference, _ = room
    head = slice(0, 2 * RATE)
    a = cancel_in_random_chunks(mic[head], reference[head], seed=1)
    b = cancel_in_random_chunks(mic[head], reference[head], seed=2)
    n = min(len(a), len(b))
    assert n > 2 * RATE - 2 * 160 - measure_latency(RATE)  # held back: < 1 frame + AEC3's delay
    np.testing.assert_array_equal(a[:n], b[:n])


def test_positions_account_for_everything():
    canceller = EchoCanceller(RATE)
    out = canceller.process(np.zeros(1000, dtype=np.float32), np.zeros(1000, dtype=np.float32))
    assert canceller.input_position == 1000
    assert canceller.output_position == len(out) == 960 - canceller.latency


def test_nonfinite_input_is_silenced_and_counted():
    canceller = EchoCanceller(RATE)
    mic = np.full(3200, 0.1, dtype=np.float32)
    mic[50:60] = np.nan
    reference = np.zeros(3200, dtype=np.float32)
    reference[7] = np.inf
    out = canceller.process(mic, reference)
    assert np.isfinite(out).all() and canceller.nonfinite_samples == 11


def test_bad_calls_are_user_errors():
    with pytest.raises(EdgevoiceError, match="16000, 32000, 48000"):
        EchoCanceller(22050)
    canceller = EchoCanceller(RATE)
    with pytest.raises(EdgevoiceError, match="same positions"):
        canceller.process(np.zeros(160, dtype=np.float32), np.zeros(100, dtype=np.float32))
    with pytest.raises(EdgevoiceError, match="mono"):
        canceller.process(np.zeros((160, 2), dtype=np.float32), np.zeros((160, 2), dtype=np.float32))


def test_missing_library_is_an_error_not_a_passthrough(monkeypatch):
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)
    with pytest.raises(MissingDependencyError, match="pywebrtc-audio"):
        EchoCanceller(RATE)


def test_noise_suppression_variant_also_cancels(room):
    mic, reference, near = room
    canceller = EchoCanceller(RATE, noise_suppression=True)
    cleaned = np.concatenate([canceller.process(mic[i : i + 480], reference[i : i + 480])
                              for i in range(0, len(mic), 480)])
    assert erle_db(mic, cleaned, far_end_only_frames(reference, near, len(cleaned))) >= 20.0


def test_whole_path_on_file_io_the_agent_does_not_hear_itself(room, vad):
    """The runtime's path end to end on the virtual clock: the agent's 22.05 kHz speech goes out
    through FileIO's speaker, echoes through the simulated room into the mic, and the listen loop
    cancels it with the aligned reference before the VAD."""
    _, _, user = room  # the user's speech alone, starting at 7 s
    agent = espeak(
        "Hello, I am your kitchen assistant. I can set timers, turn on the lights and read you the news. "
        "The weather tomorrow will be sunny with a light breeze from the west.", sample_rate=22050)
    clock = VirtualClock()
    io = FileIO(user, recording_rate=RATE, mic_rate=RATE, speaker_rate=22050, clock=clock,
                echo_path=room_response(0.05))  # 50 ms: longer than FileIO's own 40 ms reference lag
    canceller = EchoCanceller(RATE)
    mic_out, ref_out = np.zeros(640, dtype=np.float32), np.zeros(640, dtype=np.float32)
    raw, cleaned, queued = [], [], 0
    io.start()
    for _ in range(len(user) // 320 + 100):  # bounded: a stuck loop fails instead of hanging
        if clock.now() >= len(user) / RATE:
            break
        if io.speaker.readable < 4410 and queued < len(agent):  # the speak loop keeps 200 ms queued
            io.speaker.write(agent[queued : queued + 2205])
            queued += 2205
        assert io.wait_for_mic(320, timeout=1.0)
        start, count = read_aligned(io.mic, io.reference, mic_out, ref_out)
        assert start == sum(map(len, raw))  # nothing skipped: the listen loop kept up
        raw.append(mic_out[:count].copy())
        cleaned.append(canceller.process(mic_out[:count], ref_out[:count]))
    raw, cleaned = np.concatenate(raw), np.concatenate(cleaned)
    user_starts = USER_STARTS / RATE
    assert vad.segments(raw, RATE)[0].start < 1.0  # without AEC the agent would interrupt itself
    segments = vad.segments(cleaned, RATE)
    assert segments and all(s.start >= user_starts for s in segments), [(s.start, s.end) for s in segments]
    # Heard, but late: the user talks over the agent, and AEC3's double-talk suppression eats the
    # short first word "Stop" here (measured onset 7.62 s for speech starting at 7.0 s; in the
    # array room above the first word survives). A limit for the runtime's barge-in latency.
    print(f"FileIO room: user speech from {user_starts:.2f} s, VAD on cleaned audio from {segments[0].start:.2f} s")
    assert segments[0].start < user_starts + 1.0
    far_only = slice(CONVERGED, USER_STARTS)
    erle = 10 * np.log10(np.sum(raw[far_only] ** 2) / np.sum(cleaned[far_only] ** 2))
    print(f"FileIO room ERLE 3-7 s: {erle:.1f} dB")
    assert erle >= 20.0


def cancel_tracking_pass_through(mic: np.ndarray, reference: np.ndarray, chunk: int = 512):
    """(output, per-chunk pass-through flags) in device-sized chunks."""
    canceller, pieces, flags = EchoCanceller(RATE), [], []
    for start in range(0, len(mic), chunk):
        pieces.append(canceller.process(mic[start : start + chunk], reference[start : start + chunk]))
        flags.append(canceller.passing_through)
    return np.concatenate(pieces), flags


@pytest.fixture(scope="module")
def headset(agent_speech):
    """The room's signals without the room: the mic hears the user and its own noise, never the agent."""
    rng = np.random.default_rng(3)
    user = espeak("Stop, please turn off the radio.")
    length = len(agent_speech) + 2 * RATE
    reference = np.zeros(length, dtype=np.float32)
    reference[: len(agent_speech)] = agent_speech
    near = np.zeros(length, dtype=np.float32)
    near[USER_STARTS : USER_STARTS + len(user)] = user[: length - USER_STARTS]
    reference[USER_STARTS + int(0.15 * RATE) :] = 0.0  # the agent pauses at the barge-in, as the session does
    quiet_lead = np.zeros(RATE // 2, np.float32)  # half a second before the agent speaks: the mic's own floor
    near, reference = np.concatenate([quiet_lead, near]), np.concatenate([quiet_lead, reference])
    mic = (near + rng.standard_normal(len(near)) * 10 ** (-55 / 20)).astype(np.float32)
    return mic, reference, near


def test_without_echo_the_raw_microphone_is_handed_on(headset, vad):
    # With nothing to cancel AEC3 still mutes the user's first syllables while the agent talks
    # (its suppressor cannot know the room is silent): the barge-in was heard ~1 s late on a
    # headset. Once the mic is seen no louder while the speaker plays than when it is quiet, the
    # raw microphone is passed on, sample-aligned.
    mic, reference, near = headset
    out, flags = cancel_tracking_pass_through(mic, reference)
    switched = flags.index(True) * 512
    assert switched < 2 * RATE  # known within ~1 s of the agent's speech
    assert all(flags[switched // 512 :])  # and it stays so (the user's barge-in does not flip it back)
    np.testing.assert_array_equal(out[switched + 512 :], mic[switched + 512 : len(out)])
    raw_onset = vad.segments(mic[: len(out)], RATE)[0].start  # the user is the only speech the mic hears
    assert raw_onset >= USER_STARTS / RATE + 0.5
    heard = vad.segments(out, RATE)
    assert heard and heard[0].start == raw_onset, [(s.start, s.end) for s in heard]
    canceller = EchoCanceller(RATE, pass_through_without_echo=False)  # the control: AEC3's output throughout
    muted = vad.segments(np.concatenate([canceller.process(mic[i : i + 512], reference[i : i + 512])
                                         for i in range(0, len(mic), 512)]), RATE)
    print(f"user onset heard at {raw_onset:.3f} s; through AEC3 alone at {muted[0].start if muted else None}")
    assert not muted or muted[0].start > raw_onset + 0.1  # measured 7.81 vs 7.586 s: why this exists


def test_with_echo_the_canceller_output_is_kept(room):
    # The control for the test above: the same speech through the room never passes through, also
    # when the user talked first (their speech in the quiet blocks must not lift the floor).
    mic, reference, near = room
    user_first = np.concatenate([near[USER_STARTS : USER_STARTS + 2 * RATE], np.zeros(RATE // 2, np.float32)])
    mic = np.concatenate([user_first, mic])
    reference = np.concatenate([np.zeros_like(user_first), reference])
    _, flags = cancel_tracking_pass_through(mic, reference)
    assert not any(flags)
