"""FileIO on a VirtualClock: microphone blocks at the right virtual times, speaker output at the
right positions, underruns zero-filled and counted, reference aligned with the microphone."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgevoice.audio.clock import RealClock, VirtualClock
from edgevoice.audio.io import AudioStats, FileIO, RoomEcho, read_aligned, sanitize_input
from edgevoice.audio.resample import resample
from edgevoice.audio.ring import AudioRing
from edgevoice.audio.wav import read_audio, write_audio
from edgevoice.errors import EdgevoiceError


@pytest.fixture
def recording(tmp_path):
    """1.234 s of noise at 16 kHz in a WAV, and the samples as read back (16-bit quantized)."""
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 19744).astype(np.float32)
    path = tmp_path / "user.wav"
    write_audio(path, samples, 16000)
    return path, read_audio(path)[0][:, 0]


def drain(ring: AudioRing) -> np.ndarray:
    return ring.read(ring.capacity)


def test_mic_delivers_whole_blocks_at_their_virtual_times(recording):
    path, expected = recording
    clock = VirtualClock()
    with FileIO(path, mic_rate=16000, clock=clock, block_seconds=0.01) as io:
        clock.advance(0.0099)
        assert io.mic.readable == 0  # the first 10 ms block is not captured yet
        clock.advance(0.0001)
        assert io.mic.readable == 160
        clock.advance(0.245)  # t = 0.255 s: 25 whole blocks
        assert io.mic.readable == 25 * 160
        heard = [drain(io.mic)]
        for _ in range(200):  # 10 ms steps, as a listen loop would take
            clock.advance(0.01)
            heard.append(drain(io.mic))
    heard = np.concatenate(heard)
    assert len(heard) == 225 * 160  # t = 2.255 s: 225 whole blocks
    np.testing.assert_array_equal(heard[: len(expected)], expected)  # in order, nothing lost or repeated
    assert not heard[len(expected) :].any()  # silence after the recording
    assert io.recording_finished and io.stats.callbacks == len(heard) // 160


def test_many_small_advances_lose_no_block_to_rounding(recording):
    path, _ = recording
    clock = VirtualClock()
    io = FileIO(path, clock=clock)
    io.start()
    for _ in range(1000):
        clock.advance(0.001)
    assert io.mic.write_position == 16000  # 1000 x 1 ms is exactly 1 s of audio despite float error


def test_time_before_start_is_not_captured(recording):
    path, expected = recording
    clock = VirtualClock()
    io = FileIO(path, clock=clock)
    clock.advance(5.0)
    io.start()
    clock.advance(0.02)
    np.testing.assert_array_equal(drain(io.mic), expected[:320])


def test_speaker_output_lands_at_the_position_it_was_played(recording):
    path, _ = recording
    clock = VirtualClock()
    io = FileIO(path, mic_rate=16000, speaker_rate=24000, clock=clock)
    io.start()
    clock.advance(1.0)  # one second of silence played
    tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(6000) / 24000)).astype(np.float32)
    io.speaker.write(tone)
    clock.advance(0.5)
    played = io.played()
    assert len(played) == 36000
    assert not played[:24000].any()
    np.testing.assert_array_equal(played[24000:30000], tone)
    assert not played[30000:].any()
    assert io.speaker.underrun_samples == 36000 - 6000  # every silent sample was an underrun, zero-filled


def test_played_audio_is_saved_as_a_wav(recording, tmp_path):
    path, _ = recording
    clock = VirtualClock()
    io = FileIO(path, speaker_rate=22050, clock=clock)
    io.start()
    io.speaker.write(np.full(2205, 0.25, dtype=np.float32))
    clock.advance(0.2)
    io.save_played(tmp_path / "agent.wav")
    saved, rate = read_audio(tmp_path / "agent.wav")
    assert rate == 22050 and len(saved) == len(io.played()) == 0.2 * 22050 // 220 * 220
    np.testing.assert_allclose(saved[:2205, 0], 0.25, atol=1 / 32768)


def test_reference_is_what_was_played_aligned_with_the_mic(recording):
    path, _ = recording
    clock = VirtualClock()
    io = FileIO(path, mic_rate=16000, speaker_rate=16000, clock=clock)
    io.start()
    clock.advance(0.3)
    io.speaker.write(np.ones(800, dtype=np.float32))
    clock.advance(0.3)
    assert io.reference.write_position == io.mic.write_position == 9600
    reference = drain(io.reference)
    np.testing.assert_array_equal(reference, io.played())
    assert int(np.argmax(reference)) == 4800  # played at 0.3 s, so it sits at mic position 0.3 s


def test_reference_is_resampled_to_the_mic_rate_and_stays_aligned(recording):
    path, _ = recording
    clock = VirtualClock()
    io = FileIO(path, mic_rate=16000, speaker_rate=22050, clock=clock)
    io.start()
    clock.advance(0.5)
    click = np.zeros(2205, dtype=np.float32)
    click[0] = 1.0
    played_at = io.played_samples  # the speaker-rate position the click will be played at
    io.speaker.write(click)
    clock.advance(0.5)
    reference = drain(io.reference)
    # Behind only by the partial speaker block and the resampler's look-ahead (~20 ms at HQ).
    assert io.mic.write_position - io.reference.write_position < 0.03 * 16000
    assert int(np.argmax(np.abs(reference))) == round(played_at * 16000 / 22050)


def test_wait_for_mic_advances_virtual_time_only_as_far_as_needed(recording):
    path, expected = recording
    clock = VirtualClock()
    io = FileIO(path, clock=clock)
    io.start()
    assert io.wait_for_mic(512, timeout=1.0, with_reference=False)
    assert io.mic.readable == 640 and clock.now() == pytest.approx(0.04)  # 4 whole blocks
    np.testing.assert_array_equal(drain(io.mic), expected[:640])
    assert io.wait_for_mic(512, timeout=1.0)  # by default the reference must be in too (it trails)
    assert io.mic_available() >= 512 and io.reference.write_position >= io.mic.read_position + 512
    assert not io.wait_for_mic(10 * io.mic.capacity, timeout=0.05)  # more than the ring holds: gives up, no hang


def test_a_whole_file_runs_faster_than_real_time(recording):
    path, _ = recording
    clock = VirtualClock()
    io = FileIO(path, speaker_rate=22050, clock=clock)
    io.start()
    started = time.perf_counter()
    while clock.now() < 10.0:  # ten virtual seconds in 20 ms steps, with speech going out
        io.wait_for_mic(320, timeout=1.0)
        drain(io.mic), drain(io.reference)
        io.speaker.write(np.zeros(441, dtype=np.float32))
    assert time.perf_counter() - started < 5.0


def test_stereo_48k_recording_is_mixed_down_and_resampled(tmp_path):
    rate = 48000
    left = (0.4 * np.sin(2 * np.pi * 200 * np.arange(rate) / rate)).astype(np.float32)
    write_audio(tmp_path / "stereo.wav", np.stack([left, np.zeros_like(left)], axis=1), rate)
    clock = VirtualClock()
    io = FileIO(tmp_path / "stereo.wav", mic_rate=16000, clock=clock)
    io.start()
    clock.advance(1.0)
    heard = drain(io.mic)
    np.testing.assert_allclose(heard[100:-100], resample(left / 2, rate, 16000)[100:-100], atol=2e-4)


def test_bad_samples_are_silenced_and_counted():
    samples = np.array([0.1, np.nan, 1.0, -np.inf, -1.0, 0.5] * 100, dtype=np.float32)
    clock = VirtualClock()
    io = FileIO(samples, recording_rate=16000, clock=clock)
    io.start()
    clock.advance(0.04)
    heard = drain(io.mic)
    assert np.isfinite(heard).all() and heard[1] == 0.0 and heard[3] == 0.0
    assert io.stats.nonfinite_samples == 200 and io.stats.clipped_samples == 200
    assert np.isnan(samples[1])  # the caller's array is left alone


def test_sanitize_input_counts_in_place():
    stats, block = AudioStats(), np.array([np.nan, 0.9995, -2.0, 0.2], dtype=np.float32)
    assert sanitize_input(block, stats) is block
    np.testing.assert_array_equal(block, np.array([0.0, 0.9995, -2.0, 0.2], dtype=np.float32))
    assert (stats.nonfinite_samples, stats.clipped_samples) == (1, 2)


def test_samples_without_a_rate_are_refused():
    with pytest.raises(EdgevoiceError, match="recording_rate"):
        FileIO(np.zeros(100, dtype=np.float32))


def test_read_aligned_realigns_after_one_ring_overran():
    mic, reference = AudioRing(100), AudioRing(100)
    positions = np.arange(250, dtype=np.float32)
    mic.write(positions[:250])  # the mic ring overran: only positions 150..249 are left
    reference.write(positions[:180])  # the reference is behind: positions 80..179
    mic_out, ref_out = np.zeros(64, dtype=np.float32), np.zeros(64, dtype=np.float32)
    start, count = read_aligned(mic, reference, mic_out, ref_out)
    assert (start, count) == (150, 30)
    np.testing.assert_array_equal(mic_out[:count], ref_out[:count])
    np.testing.assert_array_equal(mic_out[:count], positions[150:180])
    reference.write(positions[180:250])
    start, count = read_aligned(mic, reference, mic_out, ref_out)
    assert (start, count) == (180, 64)
    np.testing.assert_array_equal(mic_out, ref_out)


def test_virtual_clock_moves_only_forward_and_calls_listeners():
    clock, seen = VirtualClock(), []
    clock.subscribe(seen.append)
    clock.advance(0.5)
    clock.advance_to(0.25)  # in the past: nothing moves
    clock.sleep(0.25)
    assert seen == [0.0, 0.5, 0.5, 0.75] and clock.now() == 0.75
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_real_clock_counts_from_zero():
    clock = RealClock()
    first = clock.now()
    clock.sleep(0.01)
    assert 0 <= first < 0.01 and clock.now() >= 0.01


def test_read_aligned_waits_when_the_reference_is_far_behind():
    mic, reference = AudioRing(100), AudioRing(100)
    mic.write(np.arange(250, dtype=np.float32))  # mic holds 150..249
    reference.write(np.arange(120, dtype=np.float32))  # reference only reached 119
    mic_out, ref_out = np.zeros(32, dtype=np.float32), np.zeros(32, dtype=np.float32)
    assert read_aligned(mic, reference, mic_out, ref_out)[1] == 0  # nothing common yet, and no hang
    reference.write(np.arange(120, 200, dtype=np.float32))
    start, count = read_aligned(mic, reference, mic_out, ref_out)
    assert (start, count) == (150, 32)
    np.testing.assert_array_equal(mic_out, ref_out)


def test_flush_speaker_drops_queued_speech(recording):
    path, _ = recording
    clock = VirtualClock()
    io = FileIO(path, speaker_rate=16000, clock=clock)
    io.start()
    io.speaker.write(np.ones(16000, dtype=np.float32))
    clock.advance(0.1)
    io.flush_speaker()
    clock.advance(0.1)
    played = io.played()
    assert played[:1600].all() and not played[1600:].any() and io.speaker.readable == 0


def test_paced_file_io_delivers_audio_no_faster_than_real_time(recording):
    io = FileIO(np.zeros(16000, np.float32), recording_rate=16000, pace=1.0)
    scratch = np.zeros(1600, np.float32)
    with io:
        start = time.monotonic()
        for _ in range(3):  # 0.3 s of microphone audio
            assert io.wait_for_mic(1600, timeout=1.0)
            io.mic.read_into(scratch)
        elapsed = time.monotonic() - start
    assert io.clock.now() >= 0.3
    assert elapsed >= io.clock.now() - 0.005  # a device would have needed that long to capture it


def test_keep_played_bounds_what_is_kept():
    io = FileIO(np.zeros(16000 * 5, np.float32), recording_rate=16000, keep_played_s=1.0)
    with io:
        io.clock.advance(5.0)
    assert abs(len(io.played()) - io.speaker_rate) <= 220  # the last second only (whole 10 ms blocks)
    assert io.played_samples >= 5 * io.speaker_rate - 220  # counted though not kept


def test_room_echo_window_equals_the_full_convolution():
    rng = np.random.default_rng(0)
    response = np.concatenate([np.zeros(320, np.float32), rng.normal(0, 0.1, 800).astype(np.float32)])
    echo = RoomEcho(response)
    played = rng.normal(0, 0.5, 16000 * 6).astype(np.float32)
    full = np.convolve(played, response)[: len(played)]
    got = []
    for start in range(0, len(played), 160):  # played and heard block by block, as FileIO does
        echo.played(played[start : start + 160])
        if start >= 320:
            got.append((start - 320, echo.block(start - 320, 160)))
    for start, block in got[-50:] + got[:5]:
        np.testing.assert_allclose(block, full[start : start + 160], atol=1e-4)
    assert len(echo._played) < 2 * echo._keep + 160  # bounded, not six seconds of audio


def test_timeline_reads_like_the_array_it_describes():
    from edgevoice.audio.timeline import Timeline

    rng = np.random.default_rng(0)
    timeline, array = Timeline(3.0, 16000), np.zeros(48000, np.float32)
    for at, size in ((0.5, 4000), (1.0, 100), (2.9, 1600)):
        clip = rng.normal(0, 0.3, size).astype(np.float32)
        timeline.place(at, clip)
        array[int(at * 16000) : int(at * 16000) + size] = clip
    for start in range(0, 48000, 777):
        np.testing.assert_array_equal(timeline[start : start + 1000], array[start : start + 1000])
    with pytest.raises(EdgevoiceError, match="overlaps"):
        timeline.place(0.6, np.zeros(100, np.float32))
    with pytest.raises(EdgevoiceError, match="does not fit"):
        timeline.place(2.99, np.zeros(1600, np.float32))
    io = FileIO(timeline, mic_rate=16000)
    with io:
        io.clock.advance(3.0)
    got = np.zeros(48000, np.float32)
    assert io.mic.read_into(got) == 48000
    np.testing.assert_array_equal(got, array)
