"""The simulated sound card: the real callback and pump on a virtual clock, failing when starved.

Each fault is checked alone against its arithmetic: how much audio the hardware, the device
queue or the mic ring held, and so how much was lost and how many xruns were counted.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.audio.device_io import DeviceConfig
from edgevoice.audio.simulated import SimulatedDeviceIO
from edgevoice.audio.timeline import Timeline
from edgevoice.errors import EdgevoiceError

RATE = 48000  # device rate
MIC = 16000


def sine(seconds: float, rate: int, hz: float = 300.0, level: float = 0.5) -> np.ndarray:
    return (level * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def device(seconds: float = 4.0, **config) -> SimulatedDeviceIO:
    config = {"device_rate": RATE, "block_frames": 480, **config}
    return SimulatedDeviceIO(sine(seconds, RATE), DeviceConfig(**config), recording_rate=RATE,
                             mic_rate=MIC, speaker_rate=24000)


def read_all(io: SimulatedDeviceIO, seconds: float) -> np.ndarray:
    """The listen loop's part: read the mic (and drop the reference) in 20 ms pieces as it arrives."""
    heard = []
    while io.clock.now() < seconds and io.wait_for_mic(320, timeout=1.0):
        heard.append(io.mic.read(io.mic_available()))
        io.reference.read(io.reference.readable)
    return np.concatenate(heard)


def counters(io: SimulatedDeviceIO) -> tuple[int, int, int]:
    return io.stats.xruns, io.stats.output_starved, io.mic.overrun_samples


def test_without_faults_audio_flows_both_ways_and_nothing_is_counted():
    io = device()
    io.speaker.write(sine(1.0, 24000, hz=500, level=0.25))
    with io:
        heard = read_all(io, 2.0)
    expected = sine(len(heard) / MIC, MIC)  # the talker, through the real resampler
    np.testing.assert_allclose(heard[800:], expected[800 : len(heard)], atol=3e-3)  # continuous: no gap
    assert np.abs(io.played()).max() == pytest.approx(0.25, abs=0.01)  # the speaker tone went out
    assert counters(io) == (0, 0, 0) and io.output_underrun_samples == 0 and io.lost_blocks == 0
    assert io.stats.callbacks == int(io.clock.now() * 100 + 1e-6)  # a 10 ms block every 10 ms of device time


def test_a_callback_stall_within_the_hardware_buffer_only_delays():
    io = device()
    io.stall_callbacks(0.5, 0.015)  # 1.5 blocks: the hardware holds 2
    with io:
        heard = read_all(io, 2.0)
    assert counters(io) == (0, 0, 0) and io.lost_blocks == 0
    expected = sine(len(heard) / MIC, MIC)
    np.testing.assert_allclose(heard[800:], expected[800 : len(heard)], atol=3e-3)


def test_a_longer_callback_stall_loses_audio_and_is_one_xrun():
    io = device()
    io.stall_callbacks(0.5, 0.2)  # 20 blocks come due; the hardware keeps the last 2
    with io:
        heard = read_all(io, 2.0)
    assert counters(io) == (1, 0, 0)
    assert (io.stats.input_overflows, io.stats.output_underflows) == (1, 1)
    assert io.lost_blocks == 18
    # The microphone timeline really has the hole: 180 ms fewer samples arrived than 2 s.
    assert 0.17 * MIC < 2.0 * MIC - len(heard) < 0.22 * MIC


def test_a_pump_stall_starves_the_speaker_once():
    io = device(output_lead_seconds=0.04)
    io.speaker.write(np.full(24000 * 2, 0.3, dtype=np.float32))  # speech queued for the whole run
    io.stall_pump(0.5, 0.3)
    with io:
        read_all(io, 2.0)
    assert counters(io) == (0, 1, 0)
    silent = 0.3 - 0.04  # the device queue held 40 ms of the 300 ms
    assert abs(io.output_underrun_samples - silent * RATE) <= 480  # within one block
    played = io.played()
    gap = np.flatnonzero(played[: int(1.5 * RATE)] == 0.0)
    assert abs(len(gap) - silent * RATE) <= 960  # heard as a gap in the middle of the speech


def test_a_reader_that_stops_for_longer_than_the_ring_loses_the_oldest_audio():
    io = device(seconds=8.0, buffer_seconds=2.0)
    with io:
        read_all(io, 1.0)
        io.clock.advance(3.0)  # the listen loop does not read for 3 s; the ring holds 2
        read_all(io, 5.0)
    xruns, starved, lost = counters(io)
    assert (xruns, starved) == (0, 0)
    assert abs(lost - 1.0 * MIC) <= 960  # 3 s arrived, 2 s fitted (give or take what was unread)
    assert io.reference.overrun_samples == lost  # the echo reference went with it, still aligned


def test_stalls_are_checked_and_timelines_must_be_at_the_device_rate():
    io = device()
    with pytest.raises(EdgevoiceError, match="positive length"):
        io.stall_pump(1.0, 0.0)
    with pytest.raises(EdgevoiceError, match="device rate"):
        SimulatedDeviceIO(Timeline(1.0, 16000), DeviceConfig(device_rate=RATE))
    with pytest.raises(EdgevoiceError, match="recording_rate"):
        SimulatedDeviceIO(np.zeros(100, np.float32), DeviceConfig(device_rate=RATE))
