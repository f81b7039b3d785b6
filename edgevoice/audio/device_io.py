"""Duplex sound-card I/O behind the ``AudioIO`` interface: what every PortAudio binding shares.

The bindings themselves (sounddevice, PyAudio) are in ``edgevoice.audio.portaudio``.

Two threads touch the audio, with a ring between each pair (one producer, one consumer each):

    device callback  --in ring (device rate, interleaved)-->  pump thread --> mic       (model rate)
    device callback  --played ring (device rate, mono)----->  pump thread --> reference (mic rate)
    device callback  <--out ring (device rate, mono)-------   pump thread <-- speaker   (model rate)

The callback only copies: interleaved input into ``in``, ``out`` into the device buffer (zero-filled
on underrun) and the same block into ``played``; it counts status flags as xruns, and each time
``out`` ran dry (``stats.output_starved``: the listener hears a gap PortAudio does not flag).
Everything that allocates or takes time — mixdown, NaN/clip checks, soxr resampling — runs on the pump thread.
``played`` and ``in`` are written by the same callback, and their resamplers are identical, so
``reference`` stays position-aligned with ``mic`` for the echo canceller.

The pump keeps only ``output_lead_seconds`` of device-rate audio queued ahead of the callback:
that bounds how long already-converted speech keeps playing after a barge-in clears ``speaker``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from edgevoice.audio.clock import RealClock
from edgevoice.audio.io import AudioIO, AudioStats, sanitize_input
from edgevoice.audio.resample import StreamingResampler, mixdown
from edgevoice.audio.ring import AudioRing
from edgevoice.errors import EdgevoiceError

MAX_CALLBACK_FRAMES = 16384  # larger device blocks are copied in pieces of this size


@dataclass(frozen=True)
class DeviceInfo:
    """One sound device, as either backend reports it."""

    index: int  # the backend's device index
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate: float  # Hz


@dataclass(frozen=True)
class DeviceConfig:
    """How to open the sound card."""

    input_device: int | str | None = None  # index, or a case-insensitive part of the name; None = default
    output_device: int | str | None = None  # same for the speaker; None = default
    device_rate: int | None = None  # Hz for both directions; None = the input device's default rate
    input_channels: int = 1  # channels captured (mixed down to mono on the pump thread)
    output_channels: int = 1  # channels played (the mono speaker signal on each)
    block_frames: int = 0  # frames per callback; 0 lets the backend choose (lowest latency)
    buffer_seconds: float = 2.0  # capacity of every ring: how long the runtime may stall without losing audio
    output_lead_seconds: float = 0.04  # device audio queued ahead of the callback (barge-in latency bound)
    pump_interval_seconds: float = 0.005  # how often the pump thread moves audio between the rings
    stall_seconds: float = 1.0  # no callback for this long while running = the device is gone
    quality: str = "MQ"  # soxr quality; MQ is transparent for speech at a fraction of HQ's cost


def resolve_device(devices: list[DeviceInfo], spec: int | str | None, default: int, direction: str,
                   channels: int) -> DeviceInfo:
    """The device ``spec`` names (index, exact name, or unique name part), checked for ``channels``.

    Errors list the devices that could have been meant, so the user can pick one.
    """
    key = "max_input_channels" if direction == "input" else "max_output_channels"
    usable = [d for d in devices if getattr(d, key) > 0]
    listing = "; ".join(f"{d.index}: {d.name} ({getattr(d, key)} ch)" for d in usable) or (
        "none (PortAudio sees no sound card here; for files and tests use edgevoice.audio.io.FileIO)")
    if spec is None:
        spec = default
        if spec is None or spec < 0:
            raise EdgevoiceError(f"no default {direction} device; pick one by index or name. {direction} devices: {listing}")
    if isinstance(spec, int):
        found = [d for d in devices if d.index == spec]
    else:
        found = [d for d in devices if d.name.lower() == spec.lower()]
        found = found or [d for d in devices if spec.lower() in d.name.lower() and getattr(d, key) > 0]
    if not found:
        raise EdgevoiceError(f"no {direction} device matches {spec!r}; {direction} devices: {listing}")
    if len(found) > 1:
        names = "; ".join(f"{d.index}: {d.name}" for d in found)
        raise EdgevoiceError(f"{spec!r} matches several {direction} devices ({names}); use the index or a longer name")
    device = found[0]
    if getattr(device, key) < channels:
        raise EdgevoiceError(
            f"{direction} device {device.index} ({device.name}) has {getattr(device, key)} {direction} channels, "
            f"{channels} requested; use {direction}_channels<={getattr(device, key)} or another device ({listing})"
        )
    return device


class DuplexDeviceIO(AudioIO):
    """The rings, the callback core and the pump thread shared by the sound-card backends."""

    backend = "?"

    def __init__(self, config: DeviceConfig = DeviceConfig(), *, mic_rate: int = 16000, speaker_rate: int = 22050):
        super().__init__()
        self.config = config
        self.mic_rate, self.speaker_rate = int(mic_rate), int(speaker_rate)
        self.clock = RealClock()
        self.stats = AudioStats()
        devices = self._list_devices()
        default_in, default_out = self._default_devices()
        self.input_device = resolve_device(devices, config.input_device, default_in, "input", config.input_channels)
        self.output_device = resolve_device(devices, config.output_device, default_out, "output", config.output_channels)
        self.device_rate = int(config.device_rate or self.input_device.default_rate)
        self._check_settings()
        self._allocate()
        self._stream = None
        self._pump: threading.Thread | None = None
        self._stopping = threading.Event()
        self._mic_written = threading.Event()  # set by the pump after each write to `mic`
        self._finished = False  # set by the backend when the stream ends on its own
        self._callbacks_at_reopen: int | None = None  # stats.callbacks when the pump last reopened the stream
        # Barge-in hand-over, one counter per writer so no lock is needed: the runtime bumps
        # _flushes_requested; the pump empties `speaker` and bumps _fades_requested; the callback
        # fades out the block it is playing, drops the rest of the device queue, bumps _fades_done.
        self._flushes_requested = self._flushes_handled = 0
        self._fades_requested = self._fades_done = 0
        self._starving = False  # the last callback block was short of queued output (written by the callback)

    # --- backend hooks ---------------------------------------------------------------------------

    def _list_devices(self) -> list[DeviceInfo]:
        raise NotImplementedError

    def _default_devices(self) -> tuple[int, int]:
        raise NotImplementedError

    def _check_settings(self) -> None:
        """Raise EdgevoiceError if the devices refuse the rate or channel counts."""
        raise NotImplementedError

    def _open_stream(self):
        raise NotImplementedError

    def _stream_active(self) -> bool:
        raise NotImplementedError

    def _close_stream(self) -> None:
        raise NotImplementedError

    # --- rings and the callback core -------------------------------------------------------------

    def _allocate(self) -> None:
        seconds = self.config.buffer_seconds
        frames = int(seconds * self.device_rate)
        self._in_ring = AudioRing(frames * self.config.input_channels)  # interleaved frames
        self._played_ring = AudioRing(frames)
        self._out_ring = AudioRing(frames)
        self.mic = AudioRing(int(seconds * self.mic_rate))
        self.reference = AudioRing(int(seconds * self.mic_rate))
        self.speaker = AudioRing(int(seconds * self.speaker_rate))
        self._out_block = np.zeros(MAX_CALLBACK_FRAMES, dtype=np.float32)  # callback scratch, mono
        fade = min(MAX_CALLBACK_FRAMES, self.device_rate // 100)  # 10 ms: short, but no click
        self._fade_out = np.zeros(MAX_CALLBACK_FRAMES, dtype=np.float32)  # gains: 1 -> 0, then silence
        self._fade_out[:fade] = np.linspace(1.0, 0.0, fade, dtype=np.float32)
        # Pump scratch, sized for everything one pump turn can move.
        self._pump_in = np.zeros(self._in_ring.capacity, dtype=np.float32)
        self._pump_played = np.zeros(frames, dtype=np.float32)
        self._pump_speaker = np.zeros(self.speaker.capacity, dtype=np.float32)
        quality = self.config.quality
        self._mic_resampler = StreamingResampler(self.device_rate, self.mic_rate, quality)
        self._reference_resampler = StreamingResampler(self.device_rate, self.mic_rate, quality)
        self._speaker_resampler = StreamingResampler(self.speaker_rate, self.device_rate, quality)

    def _exchange(self, indata: np.ndarray, outdata: np.ndarray, frames: int) -> None:
        """The callback's whole job; ``indata`` (frames * in_channels,) interleaved, ``outdata`` (frames, out_channels).

        Copies only: no allocation of audio buffers, no locks, no logging.
        """
        self._in_ring.write(indata[: frames * self.config.input_channels])
        done = 0
        while done < frames:
            n = min(frames - done, MAX_CALLBACK_FRAMES)
            block = self._out_block[:n]
            fed = self._out_ring.read_into(block, pad=True)  # zero-filled (and counted) if the pump fell behind
            self._count_starve(fed < n)
            if self._fades_done != self._fades_requested:  # barge-in: fade this block, drop the queue
                block *= self._fade_out[:n]
                self._out_ring.clear()
                self._fades_done = self._fades_requested
                self._starving = True  # the queue was dropped on purpose: silence until refilled is no glitch
            outdata[done : done + n] = block[:, None]  # the mono signal on every output channel
            self._played_ring.write(block)  # what really went out, silence included: the echo reference
            done += n
        self.stats.callbacks += 1

    def _count_starve(self, short: bool) -> None:
        """Count each time the output queue runs dry (once per episode, until it is fed again)."""
        if short and not self._starving:
            self.stats.output_starved += 1
        self._starving = short

    def _count_flags(self, input_overflow: bool, input_underflow: bool, output_underflow: bool,
                     output_overflow: bool) -> None:
        stats = self.stats
        if input_overflow or input_underflow or output_underflow or output_overflow:
            stats.xruns += 1
        stats.input_overflows += bool(input_overflow)
        stats.input_underflows += bool(input_underflow)
        stats.output_underflows += bool(output_underflow)
        stats.output_overflows += bool(output_overflow)

    @property
    def output_underrun_samples(self) -> int:
        """Device-rate samples the callback had to zero-fill because the pump fell behind (glitches)."""
        return self._out_ring.underrun_samples

    # --- pump thread -----------------------------------------------------------------------------

    def flush_speaker(self) -> None:
        """Barge-in: stop playing within one callback (10 ms fade) and drop all queued speech."""
        self._flushes_requested += 1

    def pump_once(self) -> None:
        """Move everything available one step along the chains (the pump thread calls this in a loop)."""
        if self._flushes_handled != self._flushes_requested:
            self._flushes_handled = self._flushes_requested
            self.speaker.clear()  # the pump is the speaker ring's consumer, so it may drop its contents
            self._speaker_resampler.reset()  # the filter history belongs to the speech just dropped
            self._fades_requested += 1
        channels = self.config.input_channels
        frames = min(self._in_ring.readable // channels, self._played_ring.readable)
        if frames:
            captured = self._pump_in[: frames * channels]
            got = self._in_ring.read_into(captured) // channels
            played = self._pump_played[:got]
            self._played_ring.read_into(played)
            mono = np.array(mixdown(captured[: got * channels].reshape(got, channels)), dtype=np.float32)
            self.mic.write(self._mic_resampler.process(sanitize_input(mono, self.stats)))
            self.reference.write(self._reference_resampler.process(played))
            self._mic_written.set()
        self._top_up_output()

    def _top_up_output(self) -> None:
        lead = int(self.config.output_lead_seconds * self.device_rate)
        for _attempt in range(4):  # soxr releases output in bursts: one feed may fall short of the lead
            missing = lead - (self._out_ring.write_position - self._out_ring.read_position)
            if missing <= 0:
                return
            # Silence is fed while nothing is queued, so the device stream stays continuous and
            # speech that arrives later starts after at most output_lead_seconds.
            wanted = min(len(self._pump_speaker), -(-missing * self.speaker_rate // self.device_rate))
            chunk = self._pump_speaker[:wanted]
            self.speaker.read_into(chunk, pad=True)
            self._out_ring.write(self._speaker_resampler.process(chunk))

    def _pump_loop(self) -> None:
        last_callbacks, last_progress = -1, self.clock.now()
        while not self._stopping.wait(self.config.pump_interval_seconds):
            try:
                self.pump_once()
                if self.stats.callbacks != last_callbacks:
                    last_callbacks, last_progress = self.stats.callbacks, self.clock.now()
                self._watch(self.clock.now() - last_progress)
            except Exception as exc:  # surface on the consumer side instead of dying silently
                self.error = exc if isinstance(exc, EdgevoiceError) else EdgevoiceError(
                    f"the {self.backend} audio pump failed: {exc!r}")
            if self.error is not None:
                self._mic_written.set()  # wake a waiting consumer so it sees the error
                return

    def _watch(self, silent_for: float) -> None:
        if self._finished or not self._stream_active():
            if not self._reopen():
                self.error = self._stopped()
        elif silent_for > self.config.stall_seconds:
            silent_since_reopen = self._callbacks_at_reopen == self.stats.callbacks
            self.error = self._stopped() if silent_since_reopen else self._stalled(silent_for)

    def _reopen(self) -> bool:
        """The stream ended on its own: reopen it, unless the last reopened one never delivered audio.

        PortAudio's ALSA host API ends a stream after an xrun on a sound server's ALSA plugin (the
        pulse plugin's delay query fails right after recovering), so an end is not always an unplugged
        device; one that is gone fails to reopen, or reopens and stays silent. The gap counts as an xrun.
        """
        if self._callbacks_at_reopen == self.stats.callbacks:
            return False
        try:
            self._close_stream()
            self._finished = False  # after the close: the old stream's finished callback has run
            self._stream = self._open_stream()
        except EdgevoiceError:
            return False
        self._callbacks_at_reopen = self.stats.callbacks
        self.stats.xruns += 1
        return True

    def _stopped(self) -> EdgevoiceError:
        return EdgevoiceError(
            f"the audio device stopped ({self.input_device.name} / {self.output_device.name}); "
            f"was it unplugged? Check `edgevoice devices` and restart the session")

    def _stalled(self, seconds: float) -> EdgevoiceError:
        return EdgevoiceError(
            f"the audio device delivered nothing for {seconds:.1f} s; it may be suspended or "
            f"taken by another program — check `edgevoice devices` and restart the session")

    # --- AudioIO ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._stream is not None:
            return
        self._top_up_output()  # something to play from the very first callback
        self._stream = self._open_stream()
        self._stopping.clear()
        self._pump = threading.Thread(target=self._pump_loop, name=f"edgevoice-{self.backend}-pump", daemon=True)
        self._pump.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._pump is not None:
            self._pump.join(timeout=2.0)
            self._pump = None
        if self._stream is not None:
            try:
                self._close_stream()
            finally:
                self._stream = None

    def wait_for_mic(self, samples: int, timeout: float, with_reference: bool = True) -> bool:
        deadline = self.clock.now() + timeout
        callbacks = self.stats.callbacks
        while True:
            self.check()
            if self.mic_available(with_reference) >= samples:
                return True
            left = deadline - self.clock.now()
            if left <= 0:
                # A running stream never runs out of audio: no callback during a wait this long is a
                # stalled device (the watchdog may not have said so yet), not the end of a recording.
                stalled = self.stats.callbacks == callbacks and timeout >= self.config.stall_seconds
                if stalled and self._stream is not None:
                    raise self._stalled(timeout)
                return False
            self._mic_written.clear()
            if self.mic_available(with_reference) < samples:
                self._mic_written.wait(min(left, 0.1))
