"""Sound-card I/O without a sound card: the callbacks are called directly with fake buffers and
flags, the device list and the stream come from a fake sounddevice / PyAudio module."""

from __future__ import annotations

import sys
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

import edgevoice.audio.devices
from edgevoice.audio import device_io, portaudio
from edgevoice.audio.device_io import DeviceConfig, DeviceInfo, resolve_device
from edgevoice.audio.portaudio import PyAudioIO, SoundDeviceIO
from edgevoice.errors import EdgevoiceError, MissingDependencyError

DEVICES = [  # what query_devices() returns on a machine with a USB headset and an HDMI output
    {"name": "HDA Intel PCH: HDMI 0", "max_input_channels": 0, "max_output_channels": 8, "default_samplerate": 48000.0},
    {"name": "USB Headset: Audio (hw:1,0)", "max_input_channels": 1, "max_output_channels": 2,
     "default_samplerate": 48000.0},
    {"name": "ReSpeaker 4 Mic Array", "max_input_channels": 4, "max_output_channels": 0, "default_samplerate": 16000.0},
]


class FakeStream:
    def __init__(self, **kwargs):
        self.kwargs, self.active, self.closed = kwargs, False, False

    def start(self):
        self.active = True

    def abort(self, ignore_errors=True):
        self.active = False

    def close(self, ignore_errors=True):
        self.closed = True


class FakeSoundDevice(SimpleNamespace):
    class PortAudioError(Exception):
        pass


def fake_sounddevice(refuse_rate: float | None = None) -> FakeSoundDevice:
    def check(device, channels, dtype, samplerate):
        if samplerate == refuse_rate:
            raise FakeSoundDevice.PortAudioError("Invalid sample rate [PaErrorCode -9997]")

    return FakeSoundDevice(query_devices=lambda: DEVICES, default=SimpleNamespace(device=[1, 1]),
                           check_input_settings=check, check_output_settings=check, Stream=FakeStream)


class Flags:
    """What sounddevice passes as ``status``: falsy when nothing happened."""

    def __init__(self, **set_flags):
        for name in ("input_overflow", "input_underflow", "output_underflow", "output_overflow"):
            setattr(self, name, set_flags.get(name, False))

    def __bool__(self):
        return any(vars(self).values())


@pytest.fixture
def sd(monkeypatch):
    fake = fake_sounddevice()
    monkeypatch.setattr(edgevoice.audio.devices, "import_sounddevice", lambda: fake)
    return fake


def make_io(sd, **config) -> SoundDeviceIO:
    return SoundDeviceIO(DeviceConfig(**config), mic_rate=16000, speaker_rate=24000)


def callback(io, indata: np.ndarray, flags: Flags | None = None) -> np.ndarray:
    """One device callback with ``indata`` (frames, channels); returns what was sent to the speaker."""
    frames = len(indata)
    outdata = np.full((frames, io.config.output_channels), 7.0, dtype=np.float32)  # garbage to be overwritten
    io._callback(indata, outdata, frames, None, flags or Flags())
    return outdata


def test_callback_zero_fills_on_underrun_and_copies_the_input(sd):
    io = make_io(sd, output_channels=2)
    captured = np.random.default_rng(0).uniform(-1, 1, (480, 1)).astype(np.float32)
    out = callback(io, captured)
    assert not out.any()  # nothing to play: silence, never stale data
    assert io.output_underrun_samples == 480
    np.testing.assert_array_equal(io._in_ring.read(480), captured[:, 0])
    assert io.stats.callbacks == 1 and io.stats.xruns == 0  # PortAudio saw nothing wrong...
    assert io.stats.output_starved == 1  # ...but the listener hears the gap, so it is counted


def test_output_starves_are_counted_once_per_gap_and_not_after_a_barge_in(sd):
    io = make_io(sd)
    silence = np.zeros((480, 1), dtype=np.float32)
    for _ in range(3):  # one gap of three blocks
        callback(io, silence)
    io._out_ring.write(np.full(960, 0.5, dtype=np.float32))
    callback(io, silence)  # fed again
    callback(io, silence)
    callback(io, silence)  # a second gap
    assert io.stats.output_starved == 2
    io._out_ring.write(np.full(960, 0.5, dtype=np.float32))
    callback(io, silence)
    io.flush_speaker()
    io.pump_once()  # hands the fade to the callback
    callback(io, silence)  # fades out and drops the queue
    callback(io, silence)  # nothing queued on purpose: silence, not a glitch
    assert io.stats.output_starved == 2


def test_callback_plays_the_queued_block_on_every_channel_and_records_it(sd):
    io = make_io(sd, output_channels=2)
    block = np.linspace(-0.5, 0.5, 256, dtype=np.float32)
    io._out_ring.write(block)
    out = callback(io, np.zeros((256, 1), dtype=np.float32))
    np.testing.assert_array_equal(out[:, 0], block)
    np.testing.assert_array_equal(out[:, 1], block)
    np.testing.assert_array_equal(io._played_ring.read(256), block)  # the echo reference: what went out


def test_callback_counts_status_flags_as_xruns(sd):
    io = make_io(sd)
    silence = np.zeros((64, 1), dtype=np.float32)
    callback(io, silence, Flags(input_overflow=True))
    callback(io, silence, Flags(output_underflow=True, input_underflow=True))
    callback(io, silence)
    stats = io.stats
    assert (stats.xruns, stats.callbacks) == (2, 3)
    assert (stats.input_overflows, stats.input_underflows, stats.output_underflows, stats.output_overflows) == (1, 1, 1, 0)


def test_callback_allocates_no_audio_buffers(sd):
    io = make_io(sd, output_channels=2)
    indata, outdata = np.zeros((4800, 1), dtype=np.float32), np.zeros((4800, 2), dtype=np.float32)
    io._out_ring.write(np.ones(2400, dtype=np.float32))
    io._callback(indata, outdata, 4800, None, Flags())  # warm up
    tracemalloc.start()
    io._callback(indata, outdata, 4800, None, Flags(output_underflow=True))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4800 * 4 // 4  # a copy of one block (19 kB) would show; only small Python objects do


def test_callback_handles_blocks_larger_than_its_scratch(sd):
    io = make_io(sd, buffer_seconds=1.0)
    frames = device_io.MAX_CALLBACK_FRAMES + 1000
    io._out_ring.write(np.arange(frames, dtype=np.float32) / frames)
    out = callback(io, np.zeros((frames, 1), dtype=np.float32))
    np.testing.assert_array_equal(out[:, 0], np.arange(frames, dtype=np.float32) / frames)


def test_pump_mixes_down_resamples_and_keeps_reference_aligned(sd):
    io = make_io(sd, input_device="ReSpeaker", input_channels=2, output_device="USB", device_rate=48000)
    t = np.arange(48000) / 48000
    left = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    stereo = np.stack([left, -left * 0], axis=1)  # the talker on the left channel only
    io.speaker.write((0.25 * np.sin(2 * np.pi * 500 * np.arange(24000) / 24000)).astype(np.float32))
    for start in range(0, 48000, 480):  # 100 callbacks of 10 ms, the pump after each
        io.pump_once()
        callback(io, stereo[start : start + 480])
    io.pump_once()
    heard, reference = io.mic.read(16000), io.reference.read(16000)
    # 1 s in, 1 s out less the resampler's look-ahead (~15 ms at MQ); mic and reference in lockstep.
    assert 16000 - 320 < len(heard) <= 16000 and len(reference) == len(heard)
    middle = slice(1000, len(heard) - 1000)
    expected = 0.25 * np.sin(2 * np.pi * 300 * np.arange(len(heard)) / 16000)  # mixdown halves the level
    np.testing.assert_allclose(heard[middle], expected[middle], atol=2e-3)
    assert np.abs(reference[8000:]).max() == pytest.approx(0.25, abs=0.01)  # the speaker tone went out
    assert io.output_underrun_samples <= 480  # only the first callback ran before the pump queued audio


def test_pump_silences_and_counts_nonfinite_input(sd):
    io = make_io(sd)
    broken = np.zeros((960, 1), dtype=np.float32)
    broken[100:110] = np.nan
    broken[200] = np.inf
    callback(io, broken)
    io.pump_once()
    assert io.stats.nonfinite_samples == 11
    assert np.isfinite(io.mic.read(1000)).all()


def test_output_queue_stays_short_so_barge_in_is_quick(sd):
    io = make_io(sd, output_lead_seconds=0.04)
    io.speaker.write(np.ones(24000, dtype=np.float32))  # a whole second of speech queued
    io.pump_once()
    queued = io._out_ring.write_position - io._out_ring.read_position
    assert queued <= 0.04 * 48000  # only 40 ms went to the device ring
    # The rest is still in `speaker`, where a barge-in drops it (40 ms lead + soxr's look-ahead taken).
    assert io.speaker.readable > 24000 - 0.08 * 24000


def test_flush_speaker_fades_out_within_one_callback_and_drops_the_queue(sd):
    io = make_io(sd, output_lead_seconds=0.04)
    io.speaker.write(np.full(24000, 0.5, dtype=np.float32))
    for _ in range(5):  # speech is playing
        io.pump_once()
        callback(io, np.zeros((480, 1), dtype=np.float32))
    io.flush_speaker()  # the user barged in
    io.pump_once()
    assert io.speaker.readable == 0
    out = callback(io, np.zeros((480, 1), dtype=np.float32))[:, 0]
    assert out[0] > 0.4 and np.all(np.diff(out) <= 1e-6) and out[-1] == 0.0  # a ramp down, no click
    io.pump_once()
    after = [callback(io, np.zeros((480, 1), dtype=np.float32)) for _ in range(5)]
    assert not np.any(after)  # silence from the next callback on


@pytest.mark.parametrize("spec,match", [("Bluetooth", "no input device matches 'Bluetooth'"), (7, "no input device")])
def test_unknown_device_lists_the_devices(sd, spec, match):
    with pytest.raises(EdgevoiceError, match=match) as error:
        make_io(sd, input_device=spec)
    assert "1: USB Headset: Audio (hw:1,0) (1 ch)" in str(error.value)
    assert "HDMI" not in str(error.value)  # it has no input, so it is not offered


def test_too_many_channels_is_a_user_error(sd):
    with pytest.raises(EdgevoiceError, match="has 1 input channels, 2 requested"):
        make_io(sd, input_channels=2)


def test_output_only_device_as_input_is_refused(sd):
    with pytest.raises(EdgevoiceError, match="has 0 input channels"):
        make_io(sd, input_device=0)


def test_ambiguous_name_is_refused():
    devices = [DeviceInfo(0, "USB Mic A", 1, 0, 48000.0), DeviceInfo(1, "USB Mic B", 1, 0, 48000.0)]
    with pytest.raises(EdgevoiceError, match="several"):
        resolve_device(devices, "usb mic", -1, "input", 1)
    assert resolve_device(devices, "usb mic b", -1, "input", 1).index == 1


def test_no_default_device_says_how_to_pick_one():
    with pytest.raises(EdgevoiceError, match="no default input device"):
        resolve_device([DeviceInfo(0, "Mic", 1, 0, 16000.0)], None, -1, "input", 1)


def test_refused_rate_names_the_default_rate(monkeypatch):
    fake = fake_sounddevice(refuse_rate=44100)
    monkeypatch.setattr(edgevoice.audio.devices, "import_sounddevice", lambda: fake)
    with pytest.raises(EdgevoiceError, match="refuses 44100 Hz.*default rate is 48000 Hz"):
        make_io(fake, device_rate=44100)


def test_stream_is_opened_duplex_at_the_device_rate(sd):
    io = make_io(sd, input_device="ReSpeaker", input_channels=4, output_device="USB", output_channels=2)
    io.start()
    try:
        kwargs = io._stream.kwargs
        assert kwargs["device"] == (2, 1) and kwargs["channels"] == (4, 2)
        assert kwargs["samplerate"] == 16000 and kwargs["dtype"] == "float32"  # the ReSpeaker's default rate
    finally:
        io.stop()
    assert io._stream is None


def test_device_disappearing_mid_stream_is_raised_to_the_consumer(sd):
    io = make_io(sd)
    io.start()
    try:
        callback(io, np.zeros((480, 1), dtype=np.float32))
        io._stream.active = False  # PortAudio stopped the stream: the device went away
        started = time.monotonic()
        with pytest.raises(EdgevoiceError, match="stopped.*unplugged"):
            io.wait_for_mic(16000, timeout=10.0)
        assert time.monotonic() - started < 2.0  # surfaced promptly, not at the timeout
    finally:
        io.stop()


def test_device_that_stops_calling_back_is_reported_not_waited_on(sd):
    io = make_io(sd, stall_seconds=0.2)
    io.start()
    try:
        with pytest.raises(EdgevoiceError, match="delivered nothing"):
            io.wait_for_mic(16000, timeout=10.0)
    finally:
        io.stop()


def test_wait_for_mic_returns_when_enough_audio_arrived(sd):
    io = make_io(sd)
    io.start()
    try:
        for _ in range(10):
            callback(io, np.zeros((480, 1), dtype=np.float32))
        assert io.wait_for_mic(1000, timeout=5.0)
    finally:
        io.stop()


# --- PyAudio -----------------------------------------------------------------------------------

class FakePyAudioInstance:
    terminated = 0
    infos = [{"index": 0, "name": "USB Headset", "maxInputChannels": 1, "maxOutputChannels": 2,
              "defaultSampleRate": 48000.0}]

    def get_device_count(self):
        return len(self.infos)

    def get_device_info_by_index(self, index):
        return self.infos[index]

    def get_default_input_device_info(self):
        return self.infos[0]

    def get_default_output_device_info(self):
        raise OSError("No Default Output Device Available")

    def is_format_supported(self, rate, **kwargs):
        return True

    def terminate(self):
        FakePyAudioInstance.terminated += 1


def fake_pyaudio():
    # The constants are PortAudio's (paFloat32 = 1, the status bits 1/2/4/8), as PyAudio exports them.
    return SimpleNamespace(PyAudio=FakePyAudioInstance, paFloat32=1, paContinue=0, paFramesPerBufferUnspecified=0,
                           paInputUnderflow=1, paInputOverflow=2, paOutputUnderflow=4, paOutputOverflow=8)


def test_pyaudio_callback_returns_the_output_bytes_and_counts_flags(monkeypatch):
    monkeypatch.setattr(portaudio, "import_pyaudio", fake_pyaudio)
    io = PyAudioIO(DeviceConfig(output_device=0), mic_rate=16000, speaker_rate=22050)
    io._out_ring.write(np.full(100, 0.5, dtype=np.float32))
    captured = np.linspace(-1, 1, 160, dtype=np.float32)
    out_bytes, flag = io._callback(captured.tobytes(), 160, {}, 2 | 4)
    out = np.frombuffer(out_bytes, dtype=np.float32)
    assert flag == 0 and len(out) == 160
    np.testing.assert_array_equal(out[:100], 0.5)
    assert not out[100:].any()
    np.testing.assert_array_equal(io._in_ring.read(160), captured)
    assert (io.stats.xruns, io.stats.input_overflows, io.stats.output_underflows) == (1, 1, 1)


def test_pyaudio_without_a_default_output_asks_for_a_device(monkeypatch):
    monkeypatch.setattr(portaudio, "import_pyaudio", fake_pyaudio)
    before = FakePyAudioInstance.terminated
    with pytest.raises(EdgevoiceError, match="no default output device"):
        PyAudioIO(DeviceConfig(), mic_rate=16000)
    assert FakePyAudioInstance.terminated == before + 1  # PortAudio released, not leaked


def test_pyaudio_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # makes `import pyaudio` fail
    with pytest.raises(MissingDependencyError, match="portaudio19-dev"):
        PyAudioIO(DeviceConfig())


@pytest.mark.skipif(sys.modules.get("pyaudio") is None and not __import__("importlib").util.find_spec("pyaudio"),
                    reason="pyaudio is not installed (optional backend)")
def test_pyaudio_constants_match_the_fake():
    import pyaudio

    real, fake = pyaudio, fake_pyaudio()
    for name in ("paFloat32", "paContinue", "paInputUnderflow", "paInputOverflow", "paOutputUnderflow",
                 "paOutputOverflow", "paFramesPerBufferUnspecified"):
        assert getattr(real, name) == getattr(fake, name), name


class ClockedStream(FakeStream):
    """A fake duplex stream whose 'sound card' thread calls the callback every 10 ms in real time,
    capturing a 300 Hz sine and keeping what was played."""

    def start(self):
        import threading

        super().start()
        self.played, self.frames = [], 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        rate, block = self.kwargs["samplerate"], 480
        start = time.monotonic()
        while self.active:
            t = (self.frames + np.arange(block)) / rate
            indata = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)[:, None]
            outdata = np.zeros((block, 1), dtype=np.float32)
            self.kwargs["callback"](indata, outdata, block, None, Flags())
            self.played.append(outdata[:, 0].copy())
            self.frames += block
            time.sleep(max(0.0, start + self.frames / rate - time.monotonic()))

    def abort(self, ignore_errors=True):
        super().abort()
        self.thread.join()


def test_threads_end_to_end_in_real_time(monkeypatch):
    fake = fake_sounddevice()
    fake.Stream = ClockedStream
    monkeypatch.setattr(edgevoice.audio.devices, "import_sounddevice", lambda: fake)
    io = SoundDeviceIO(DeviceConfig(device_rate=48000), mic_rate=16000, speaker_rate=24000)
    tone = (0.25 * np.sin(2 * np.pi * 500 * np.arange(12000) / 24000)).astype(np.float32)  # 0.5 s
    io.speaker.write(tone)
    heard = []
    with io:
        while sum(map(len, heard)) < 16000:  # one second of microphone audio, read as it arrives
            assert io.wait_for_mic(320, timeout=2.0)
            heard.append(io.mic.read(io.mic_available()))
            io.reference.read(io.reference.readable)
        stream = io._stream
    heard = np.concatenate(heard)[:16000]
    expected = 0.5 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    np.testing.assert_allclose(heard[500:], expected[500:], atol=2e-3)  # continuous: no gaps, no repeats
    played = np.concatenate(stream.played)
    assert np.abs(played).max() == pytest.approx(0.25, abs=0.01)  # the tone went out at the device rate
    assert io.output_underrun_samples == 0 and io.stats.xruns == 0 and io.error is None
