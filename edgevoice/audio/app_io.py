"""Audio from and to the application's own stack: a robot's audio bus, a WebRTC track, a test rig.

The application owns the device and calls, from its own audio thread, ``write_mic`` with each
captured block and ``read_speaker`` for each block it plays, in lockstep like a duplex callback
(one read per write, the same duration). What ``read_speaker`` hands out is, by that contract,
what was played while the matching microphone block was captured: it becomes the echo
canceller's reference at the same position. Rates and channel counts are converted here
(soxr allocates, so call these from a thread that may allocate, not from a hard real-time one).
"""

from __future__ import annotations

import threading

import numpy as np

from edgevoice.audio.clock import RealClock
from edgevoice.audio.io import AudioIO, AudioStats, sanitize_input
from edgevoice.audio.resample import StreamingResampler, mixdown
from edgevoice.audio.ring import AudioRing
from edgevoice.errors import EdgevoiceError


class AppAudioIO(AudioIO):
    """An ``AudioIO`` fed and drained by the application (push microphone, pull speaker)."""

    def __init__(self, *, input_rate: int, output_rate: int, mic_rate: int = 16000, speaker_rate: int = 22050,
                 buffer_seconds: float = 4.0):
        super().__init__()
        for name, rate in (("input_rate", input_rate), ("output_rate", output_rate)):
            if not 8000 <= int(rate) <= 192000:
                raise EdgevoiceError(f"{name}={rate} Hz is not an audio rate; give the rate your stack runs at")
        self.input_rate, self.output_rate = int(input_rate), int(output_rate)
        self.mic_rate, self.speaker_rate = int(mic_rate), int(speaker_rate)
        self.clock = RealClock()
        self.stats = AudioStats()
        self.mic = AudioRing(int(buffer_seconds * self.mic_rate))
        self.reference = AudioRing(int(buffer_seconds * self.mic_rate))
        self.speaker = AudioRing(int(buffer_seconds * self.speaker_rate))
        self._in = StreamingResampler(self.input_rate, self.mic_rate)
        self._out = StreamingResampler(self.speaker_rate, self.output_rate)
        self._played = StreamingResampler(self.output_rate, self.mic_rate)
        self._pending_out = np.zeros(0, np.float32)  # resampled speaker audio not yet handed out
        self._arrived = threading.Condition()
        self._flush = False
        self._running = False

    def start(self) -> None:
        self._running = True

    def stop(self) -> None:
        self._running = False
        with self._arrived:
            self._arrived.notify_all()

    def write_mic(self, block: np.ndarray) -> None:
        """One captured block at ``input_rate``: (frames,) or (frames, channels), float32 in [-1, 1]."""
        pcm = np.array(mixdown(np.asarray(block, dtype=np.float32)), dtype=np.float32)
        self.mic.write(sanitize_input(self._in.process(pcm), self.stats))
        self.stats.callbacks += 1
        with self._arrived:
            self._arrived.notify_all()

    def read_speaker(self, frames: int) -> np.ndarray:
        """The next ``frames`` samples to play at ``output_rate`` (silence while the agent is quiet)."""
        if self._flush:
            self._flush = False
            self.speaker.clear()
            self._pending_out = np.zeros(0, np.float32)
        while self._pending_out.size < frames and self.speaker.readable:
            chunk = np.zeros(min(self.speaker.readable, 4096), np.float32)
            self.speaker.read_into(chunk)
            self._pending_out = np.concatenate([self._pending_out, self._out.process(chunk)])
        out = np.zeros(frames, np.float32)
        n = min(frames, self._pending_out.size)
        out[:n], self._pending_out = self._pending_out[:n], self._pending_out[n:]
        self.reference.write(self._played.process(out))
        return out

    def flush_speaker(self) -> None:
        self._flush = True  # applied by the application's next read_speaker, on its own thread

    def wait_for_mic(self, samples: int, timeout: float, with_reference: bool = True) -> bool:
        self.check()
        with self._arrived:
            return self._arrived.wait_for(lambda: not self._running or self.mic_available(with_reference) >= samples,
                                          timeout) and self.mic_available(with_reference) >= samples
