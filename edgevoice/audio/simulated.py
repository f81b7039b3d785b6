"""A sound card simulated on a virtual clock: the real device path, without the hardware.

``SimulatedDeviceIO`` is a ``DuplexDeviceIO`` whose stream is driven by a ``VirtualClock``: every
block of device time its callback runs the same ``_exchange`` / ``_count_flags`` code a PortAudio
callback runs, and every ``pump_interval_seconds`` the pump moves audio between the rings as the
pump thread would. A recording is the microphone; the rings, resamplers, barge-in fade and xrun
counting are the ones a live session uses, so headless runs (CI, benchmarks) exercise them.

Unlike ``FileIO`` it fails the way a sound card fails, at chosen device times:

- ``stall_callbacks(at, seconds)``: the host does not schedule the audio thread. The hardware
  holds ``hardware_blocks`` blocks; if the stall outlasts them the older blocks are lost on input,
  the speaker runs dry, and the first callback afterwards carries PortAudio's input-overflow and
  output-underflow flags (one xrun). A shorter stall only delays the callbacks.
- ``stall_pump(at, seconds)``: the pump thread is not scheduled. The callback plays the
  ``output_lead_seconds`` queued for it, then silence (one ``output_starved``).
- A listen loop that stops reading is the caller advancing the clock without reading the mic
  (``io.clock.advance(seconds)``): past the ring's ``buffer_seconds`` the oldest audio is lost.

Device time starts at ``start()``; block ``k`` is complete, and its callback due, at
``(k + 1) * block`` frames. At the same instant the callback runs before the pump.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from edgevoice.audio.clock import VirtualClock
from edgevoice.audio.device_io import DeviceConfig, DeviceInfo, DuplexDeviceIO
from edgevoice.audio.resample import resample
from edgevoice.errors import EdgevoiceError

DEFAULT_RATE = 48000  # what most sound cards run at


class DeviceStatus:
    """The ``status`` a sounddevice callback gets: four flags, falsy when none is set."""

    def __init__(self, input_overflow: bool = False, output_underflow: bool = False):
        self.input_overflow, self.output_underflow = input_overflow, output_underflow
        self.input_underflow = self.output_overflow = False  # a duplex stream's stall never sets these

    def __bool__(self) -> bool:
        return self.input_overflow or self.output_underflow


class SimulatedDeviceIO(DuplexDeviceIO):
    """Duplex I/O through the device callback and pump, clocked by a ``VirtualClock``."""

    backend = "simulated"

    def __init__(self, recording, config: DeviceConfig = DeviceConfig(), *, recording_rate: int | None = None,
                 mic_rate: int = 16000, speaker_rate: int = 22050, clock: VirtualClock | None = None,
                 hardware_blocks: int = 2, keep_played_s: float | None = None):
        super().__init__(config, mic_rate=mic_rate, speaker_rate=speaker_rate)
        self.clock = clock or VirtualClock()
        self.block = config.block_frames or self.device_rate // 100  # backends pick ~10 ms blocks
        self.hardware_blocks = hardware_blocks
        self._recording = self._load(recording, recording_rate)
        self._pump_every = max(1, round(config.pump_interval_seconds * self.device_rate))  # frames
        self._callback_stalls: list[tuple[int, int]] = []  # [start, end) in device frames
        self._pump_stalls: list[tuple[int, int]] = []
        self._origin: float | None = None  # clock time of device frame 0
        self._captured = 0  # blocks the hardware has captured
        self._handed = 0  # blocks given to (or lost before) the callback
        self._pumped = 0  # pump ticks done or skipped
        self._indata = np.zeros((self.block, config.input_channels), dtype=np.float32)
        self._outdata = np.zeros((self.block, config.output_channels), dtype=np.float32)
        keep = None if keep_played_s is None else max(1, int(keep_played_s * self.device_rate / self.block))
        self._played: collections.deque[np.ndarray] = collections.deque(maxlen=keep)
        self.lost_blocks = 0  # blocks the hardware dropped during callback stalls

    # --- faults ----------------------------------------------------------------------------------

    def stall_callbacks(self, at: float, seconds: float) -> None:
        """From device time ``at`` (s), no callback runs for ``seconds``."""
        self._callback_stalls.append(self._span(at, seconds))

    def stall_pump(self, at: float, seconds: float) -> None:
        """From device time ``at`` (s), the pump does not run for ``seconds``."""
        self._pump_stalls.append(self._span(at, seconds))

    def _span(self, at: float, seconds: float) -> tuple[int, int]:
        if at < 0 or seconds <= 0:
            raise EdgevoiceError(f"a stall needs a time >= 0 and a positive length, got {seconds} s at {at} s")
        start = round(at * self.device_rate)
        return start, start + round(seconds * self.device_rate)

    # --- the backend hooks: one simulated device, opened on the clock ----------------------------

    def _list_devices(self) -> list[DeviceInfo]:
        rate = float(self.config.device_rate or DEFAULT_RATE)
        channels = max(self.config.input_channels, self.config.output_channels)
        return [DeviceInfo(0, "simulated duplex device", channels, channels, rate)]

    def _default_devices(self) -> tuple[int, int]:
        return 0, 0

    def _check_settings(self) -> None:
        pass  # the simulated device takes any rate and channel count

    def _open_stream(self):
        self._origin = self.clock.now()
        self.clock.subscribe(self._on_time)
        return self

    def _stream_active(self) -> bool:
        return self._stream is not None

    def _close_stream(self) -> None:
        self.clock.unsubscribe(self._on_time)

    def _load(self, recording, recording_rate: int | None):
        """``recording`` as something sliceable at the device rate: an array (resampled) or a Timeline."""
        rate = getattr(recording, "rate", recording_rate)  # a Timeline knows its rate
        if rate is None:
            raise EdgevoiceError("SimulatedDeviceIO got samples without their rate; pass recording_rate=<Hz>")
        if not isinstance(recording, np.ndarray):
            if rate != self.device_rate:
                raise EdgevoiceError(f"the timeline is at {rate} Hz; build it at the device rate ({self.device_rate} Hz)")
            return recording
        return resample(np.asarray(recording, dtype=np.float32), int(rate), self.device_rate)

    # --- AudioIO: no threads, the clock drives everything ----------------------------------------

    def start(self) -> None:
        if self._stream is None:
            self._top_up_output()  # something to play from the very first callback, as live
            self._stream = self._open_stream()

    def stop(self) -> None:
        if self._stream is not None:
            self._close_stream()
            self._stream = None

    def wait_for_mic(self, samples: int, timeout: float, with_reference: bool = True) -> bool:
        """Advance the clock tick by tick until ``mic`` holds ``samples`` (or ``timeout`` passes)."""
        self.check()
        if self._origin is None:
            raise EdgevoiceError("SimulatedDeviceIO is not started; call start() (or use it as a context manager)")
        deadline = self.clock.now() + timeout
        while self.mic_available(with_reference) < samples:
            if self.clock.now() >= deadline or samples > self.mic.capacity:
                return False
            next_tick = self._origin + min(self._next_callback_frame(), self._next_pump_frame()) / self.device_rate
            self.clock.advance_to(min(deadline, next_tick))
        return True

    def played(self) -> np.ndarray:
        """What the device sent to the speaker (all of it, or the last ``keep_played_s``), at the device rate."""
        return np.concatenate(self._played) if self._played else np.zeros(0, dtype=np.float32)

    # --- the device's timeline -------------------------------------------------------------------

    def _next_callback_frame(self) -> int:
        return (self._captured + 1) * self.block

    def _next_pump_frame(self) -> int:
        return (self._pumped + 1) * self._pump_every

    def _on_time(self, now: float) -> None:
        """Run every callback and pump tick due by ``now``, in device-time order."""
        due = math.floor((now - self._origin) * self.device_rate + 1e-6)
        while True:
            callback_at, pump_at = self._next_callback_frame(), self._next_pump_frame()
            if min(callback_at, pump_at) > due:
                return
            if callback_at <= pump_at:
                self._captured += 1
                if not _inside(callback_at, self._callback_stalls):
                    self._run_callbacks()
            else:
                self._pumped += 1
                if not _inside(pump_at, self._pump_stalls):
                    self.pump_once()

    def _run_callbacks(self) -> None:
        """Hand the callback every captured block the hardware still holds; flag what it lost."""
        missed = self._captured - self._handed - 1  # callbacks that did not run when their block was due
        lost = max(0, missed - self.hardware_blocks)
        self._handed += lost
        self.lost_blocks += lost
        status = DeviceStatus(input_overflow=lost > 0, output_underflow=lost > 0)
        while self._handed < self._captured:
            self._callback_block(self._handed, status)
            self._handed += 1
            status = DeviceStatus()  # PortAudio reports an xrun once, to the next callback

    def _callback_block(self, index: int, status: DeviceStatus) -> None:
        start = index * self.block
        piece = self._recording[start : start + self.block]
        self._indata[:] = 0.0
        self._indata[: len(piece)] = np.asarray(piece, dtype=np.float32)[:, None]  # the talker on every channel
        self._callback(self._indata, self._outdata, self.block, None, status)
        self._played.append(self._outdata[:, 0].copy())

    def _callback(self, indata, outdata, frames, time, status) -> None:
        """The sounddevice callback's shape: flags first, then the copy every backend shares."""
        if status:
            self._count_flags(status.input_overflow, status.input_underflow, status.output_underflow,
                              status.output_overflow)
        self._exchange(indata.reshape(-1), outdata, frames)


def _inside(frame: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= frame < end for start, end in spans)
