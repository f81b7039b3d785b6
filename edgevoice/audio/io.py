"""The runtime's audio I/O interface, input checks, and the file-backed implementation.

Every implementation hands the runtime three rings at model rates, mono float32:

- ``mic``: what the microphone heard (after mixdown, resampling and input checks);
- ``reference``: what the speaker actually played, at the mic rate and aligned with ``mic`` by
  absolute position: ``reference`` sample ``k`` went out while ``mic`` sample ``k`` came in. It is
  the echo canceller's far-end signal (``edgevoice.audio.echo``);
- ``speaker``: what the runtime wants played; silence is played while it is empty.

Device implementations (``edgevoice.audio.device_io``) do mixdown and resampling on a pump
thread, never in the audio callback (soxr allocates). ``FileIO`` here plays a recording as the
microphone on a ``VirtualClock`` and collects what was played, so whole conversations run
deterministically and faster than real time.
"""

from __future__ import annotations

import collections
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevoice.audio.clock import Clock, VirtualClock
from edgevoice.audio.resample import StreamingResampler, mixdown, resample
from edgevoice.audio.ring import AudioRing
from edgevoice.audio.wav import read_audio, write_audio
from edgevoice.errors import EdgevoiceError

# |x| at or above this counts as clipped: float PCM from a 16-bit ADC tops out at 32767/32768.
CLIP_LEVEL = 0.999


@dataclass
class AudioStats:
    """Counters a consumer can read at any time (each has a single writer)."""

    callbacks: int = 0  # device callbacks (or file blocks) handled
    xruns: int = 0  # callbacks that reported any over/underflow flag
    input_overflows: int = 0  # the device dropped microphone audio before we got it
    input_underflows: int = 0
    output_underflows: int = 0  # the device ran out of speaker audio (PortAudio's flag)
    output_overflows: int = 0
    output_starved: int = 0  # times the device's output queue ran dry and it played silence (the pump fell behind)
    nonfinite_samples: int = 0  # NaN/inf microphone samples, replaced by 0
    clipped_samples: int = 0  # microphone samples at full scale (the input gain is too high)


def sanitize_input(block: np.ndarray, stats: AudioStats) -> np.ndarray:
    """In place: replace NaN/inf by 0 and count them; count clipped samples. Returns ``block``.

    A broken driver or a float WAV can deliver NaN; one NaN would poison every recurrent state
    downstream (VAD, encoder caches), so it is silenced here — the defined recovery — and counted.
    """
    finite = np.isfinite(block)
    if not finite.all():
        stats.nonfinite_samples += int(block.size - np.count_nonzero(finite))
        block[~finite] = 0.0
    stats.clipped_samples += int(np.count_nonzero(np.abs(block) >= CLIP_LEVEL))
    return block


def read_aligned(mic: AudioRing, reference: AudioRing, mic_out: np.ndarray, ref_out: np.ndarray) -> tuple[int, int]:
    """Read the same absolute positions from ``mic`` and ``reference``; returns (start position, count).

    The two rings are written in lockstep but may be a few samples apart (resampler look-ahead)
    and may have overrun independently; this skips whichever is behind so both copies start at
    the same position, and copies only what both hold.
    """
    if len(mic_out) == 0 or len(mic_out) != len(ref_out):
        raise ValueError(f"need two equal, non-empty buffers, got {len(mic_out)} and {len(ref_out)}")
    for _attempt in range(4):  # the producer can overrun us again while we skip; retry a few times
        mic.read_into(mic_out[:0])  # a zero-length read only skips what an overrun overwrote
        reference.read_into(ref_out[:0])
        start = max(mic.read_position, reference.read_position)
        for ring, scratch in ((mic, mic_out), (reference, ref_out)):
            while ring.read_position < start:  # discard the unmatched head in scratch-sized pieces
                if ring.read_into(scratch[: min(len(scratch), start - ring.read_position)]) == 0:
                    return start, 0  # this ring has not reached `start` yet; the next call continues
        if mic.read_position == reference.read_position == start:
            break
    else:
        return start, 0
    count = max(0, min(mic.write_position, reference.write_position, start + len(mic_out)) - start)
    got_mic = mic.read_into(mic_out[:count])
    got_ref = reference.read_into(ref_out[:count])
    if got_mic != count or got_ref != count:  # lapped during the copy: realign on the next call
        return start, 0
    return start, count


class AudioIO(ABC):
    """Duplex audio for the runtime: rings at model rates, a clock, counters, start/stop."""

    mic: AudioRing  # model-rate mono microphone PCM; the runtime reads it
    reference: AudioRing  # what was played, at mic_rate, aligned with mic by position
    speaker: AudioRing  # model-rate mono PCM to play; the runtime writes it
    mic_rate: int  # sample rate of mic and reference
    speaker_rate: int  # sample rate of speaker
    clock: Clock
    stats: AudioStats

    def __init__(self):
        self.error: Exception | None = None  # set when the device failed; raised by check()

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def check(self) -> None:
        """Raise the device's failure, if there was one (called by consumers on every loop turn)."""
        if self.error is not None:
            raise self.error

    @abstractmethod
    def flush_speaker(self) -> None:
        """Barge-in: drop everything queued in ``speaker`` and stop what is playing (short fade).

        Call this instead of ``speaker.clear()``: the ring's consumer is the I/O, not the runtime.
        """

    @abstractmethod
    def wait_for_mic(self, samples: int, timeout: float, with_reference: bool = True) -> bool:
        """Wait until ``mic`` holds ``samples`` (with their ``reference`` too, by default, as the echo
        canceller needs both); False after ``timeout`` seconds, raises on device failure."""

    def mic_available(self, with_reference: bool = True) -> int:
        """Samples readable from ``mic`` now; with ``with_reference`` only those whose reference is in too."""
        if not with_reference:
            return self.mic.readable
        end = min(self.mic.write_position, self.reference.write_position)
        return max(0, min(end - self.mic.read_position, self.mic.capacity))

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class FileIO(AudioIO):
    """A recording as the microphone and a buffer as the speaker, on a virtual clock.

    Time is the clock's: when it advances, every whole block of microphone audio that a device
    would have captured by then is written to ``mic`` (silence after the recording ends), and
    the speaker consumes its blocks at ``speaker_rate`` (silence while ``speaker`` is empty).
    Everything played is kept (``played()``, ``save_played(path)``) and fed to ``reference``.
    With ``echo_path`` (an impulse response at the mic rate, leading zeros = delay) the mic also
    hears what was played, as in a room with open speakers (see ``RoomEcho``).

    ``pace`` ties virtual time to the wall clock: with ``pace=1.0`` the microphone delivers audio no
    faster than a real device would, so a session that thinks on other threads (``Agent``) meets
    the same deadlines as on a sound card; ``None`` runs as fast as the caller asks.
    ``keep_played_s`` bounds what ``played()`` keeps (the most recent seconds), for long runs.
    """

    def __init__(self, recording: str | Path | np.ndarray, *, mic_rate: int = 16000, speaker_rate: int = 22050,
                 recording_rate: int | None = None, clock: VirtualClock | None = None,
                 block_seconds: float = 0.01, buffer_seconds: float = 4.0, echo_path: np.ndarray | None = None,
                 pace: float | None = None, keep_played_s: float | None = None):
        super().__init__()
        if pace is not None and pace <= 0:
            raise EdgevoiceError(f"pace must be > 0 (1.0 = real time) or None, got {pace}")
        self.pace = pace
        self.mic_rate, self.speaker_rate = int(mic_rate), int(speaker_rate)
        self.clock = clock or VirtualClock()
        if not isinstance(self.clock, VirtualClock):
            raise EdgevoiceError("FileIO runs on a VirtualClock (time moves when you advance it); use a device IO for real time")
        self.stats = AudioStats()
        self._recording = self._load(recording, recording_rate)  # (N,) float32 at mic_rate
        self.mic = AudioRing(int(buffer_seconds * self.mic_rate))
        self.reference = AudioRing(int(buffer_seconds * self.mic_rate))
        self.speaker = AudioRing(int(buffer_seconds * self.speaker_rate))
        self._mic_block = max(1, round(block_seconds * self.mic_rate))  # samples per captured block
        self._speaker_block = max(1, round(block_seconds * self.speaker_rate))  # samples per played block
        self._to_mic_rate = StreamingResampler(self.speaker_rate, self.mic_rate)  # played -> reference
        self._played: collections.deque[np.ndarray] = collections.deque(
            maxlen=None if keep_played_s is None else max(1, int(keep_played_s / block_seconds)))
        self._speaker_scratch = np.zeros(self._speaker_block, dtype=np.float32)
        self._origin: float | None = None  # clock time at start()
        self._wall_origin = 0.0  # time.monotonic() at start(), for pace
        self._mic_delivered = 0  # microphone samples written to `mic` so far
        self._speaker_consumed = 0  # speaker samples played so far
        self._flush_requested = False  # set by flush_speaker(), handled by the next clock step
        self._echo = None if echo_path is None else RoomEcho(echo_path)

    def _load(self, recording, recording_rate: int | None) -> np.ndarray:
        from edgevoice.audio.timeline import Timeline

        if isinstance(recording, Timeline):  # played as it is: it must already be at the mic rate
            if recording.rate != self.mic_rate:
                raise EdgevoiceError(f"the timeline is at {recording.rate} Hz; build it at the mic rate ({self.mic_rate} Hz)")
            return recording
        if isinstance(recording, (str, Path)):
            frames, recording_rate = read_audio(recording)
        else:
            if recording_rate is None:
                raise EdgevoiceError("FileIO got samples without their rate; pass recording_rate=<Hz>")
            frames = np.asarray(recording, dtype=np.float32)
        mono = np.array(mixdown(frames), dtype=np.float32)  # a copy: sanitizing must not touch the caller's array
        return resample(mono, int(recording_rate), self.mic_rate)

    @property
    def played_samples(self) -> int:
        """Speaker samples played so far (silence included): the speaker-rate position of the next one."""
        return self._speaker_consumed

    @property
    def recording_finished(self) -> bool:
        """True once every recorded sample has reached ``mic`` (silence follows)."""
        return self._mic_delivered >= len(self._recording)

    def start(self) -> None:
        if self._origin is None:
            self._origin = self.clock.now()
            self._wall_origin = time.monotonic()
            if isinstance(self.clock, VirtualClock):
                self.clock.subscribe(self._on_time)

    def stop(self) -> None:
        if self._origin is not None and isinstance(self.clock, VirtualClock):
            self.clock.unsubscribe(self._on_time)

    def wait_for_mic(self, samples: int, timeout: float, with_reference: bool = True) -> bool:
        """Advance virtual time block by block until ``mic`` holds ``samples`` (or ``timeout`` passes)."""
        self.check()
        if self._origin is None:
            raise EdgevoiceError("FileIO is not started; call start() (or use it as a context manager)")
        deadline = self.clock.now() + timeout
        while self.mic_available(with_reference) < samples:
            if self.clock.now() >= deadline or samples > self.mic.capacity:
                return False
            next_block = (self._mic_delivered // self._mic_block + 1) * self._mic_block
            next_time = self._origin + next_block / self.mic_rate
            if self.mic.readable >= samples:  # the mic is in, the reference trails: one speaker block on
                next_time = self.clock.now() + self._speaker_block / self.speaker_rate
            next_time = min(deadline, next_time)
            self._keep_pace(next_time)
            self.clock.advance_to(next_time)
        return True

    def _keep_pace(self, when: float) -> None:
        """With ``pace``: sleep until the wall clock has caught up with virtual time ``when``."""
        if self.pace is None:
            return
        due = self._wall_origin + (when - self._origin) / self.pace
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def flush_speaker(self) -> None:
        """Drop queued speech; applied at the next clock step, before anything more is played."""
        self._flush_requested = True

    def played(self) -> np.ndarray:
        """What the speaker has played (all of it, or the last ``keep_played_s``), at ``speaker_rate``."""
        return np.concatenate(self._played) if self._played else np.zeros(0, dtype=np.float32)

    def save_played(self, path: str | Path) -> None:
        write_audio(path, self.played(), self.speaker_rate)

    def _on_time(self, now: float) -> None:
        if self._flush_requested:  # blocks already played stay played; nothing queued plays after this
            self._flush_requested = False
            self.speaker.clear()
        elapsed = now - self._origin
        # Play first: a simulated echo of what was played up to now can then reach the mic blocks.
        self._play_until(self._whole_blocks(elapsed, self.speaker_rate, self._speaker_block))
        self._capture_until(self._whole_blocks(elapsed, self.mic_rate, self._mic_block))

    @staticmethod
    def _whole_blocks(elapsed: float, rate: int, block: int) -> int:
        # The tolerance absorbs float error from many small advances (100 x 0.01 s is 0.9999999...).
        due = math.floor(elapsed * rate + 1e-6)
        return due // block * block

    def _capture_until(self, target: int) -> None:
        while self._mic_delivered < target:
            start = self._mic_delivered
            block = np.zeros(self._mic_block, dtype=np.float32)
            piece = self._recording[start : start + self._mic_block]
            block[: len(piece)] = piece
            if self._echo is not None:
                block += self._echo.block(start, self._mic_block)
            self.mic.write(sanitize_input(block, self.stats))
            self._mic_delivered += self._mic_block
            self.stats.callbacks += 1

    def _play_until(self, target: int) -> None:
        while self._speaker_consumed < target:
            out = self._speaker_scratch
            self.speaker.read_into(out, pad=True)  # silence while nothing is queued, counted as underrun
            self._played.append(out.copy())
            reference = self._to_mic_rate.process(out)
            self.reference.write(reference)
            if self._echo is not None:
                self._echo.played(reference)
            self._speaker_consumed += len(out)


class RoomEcho:
    """What the microphone hears of the speaker: the played signal through a room impulse response.

    Lets a ``FileIO`` conversation exercise echo cancellation and self-barge-in end to end. The
    response is at the mic rate and starts with the speaker-to-mic delay (its leading zeros).
    """

    def __init__(self, response: np.ndarray):
        response = np.asarray(response, dtype=np.float32)
        if response.ndim != 1 or not response.any():
            raise EdgevoiceError("echo_path must be a non-zero 1-D impulse response at the mic rate")
        delay = int(np.flatnonzero(response)[0])
        self.delay, self.response = delay, response[delay:]  # (taps,) after the delay
        # What was played, at mic rate: only the window the response still reaches, so an
        # hour-long simulation does not keep an hour of audio. Index i holds sample _base + i.
        self._keep = 2 * (delay + len(self.response)) + 16000
        self._played = np.zeros(2 * self._keep, dtype=np.float32)
        self._base = 0  # absolute position of self._played[0]
        self._length = 0  # absolute position one past the last played sample

    def played(self, samples: np.ndarray) -> None:
        if self._length + len(samples) - self._base > len(self._played):
            drop = max(0, self._length - self._keep - self._base)  # keep the last _keep samples
            kept = self._played[drop : self._length - self._base].copy()
            self._base += drop
            size = max(len(self._played), len(kept) + len(samples))
            self._played = np.zeros(size, dtype=np.float32)
            self._played[: len(kept)] = kept
        at = self._length - self._base
        self._played[at : at + len(samples)] = samples
        self._length += len(samples)

    def block(self, start: int, size: int) -> np.ndarray:
        """The echo in mic samples [start, start + size): (size,) float32."""
        first, last = start - self.delay - len(self.response) + 1, start - self.delay + size  # played span
        if last > self._length:  # the played signal reaches us late (speaker blocks, resampler look-ahead)
            raise EdgevoiceError(
                f"echo_path's delay ({self.delay} samples) is shorter than the simulation's own lag "
                f"({last - self._length + self.delay} samples); start the response with more zeros "
                f"(real devices add 20-60 ms anyway) or use speaker_rate == mic_rate")
        span = np.zeros(last - first, dtype=np.float32)
        lo, hi = max(first, self._base), min(last, self._length)
        if hi > lo:
            span[lo - first : hi - first] = self._played[lo - self._base : hi - self._base]
        return np.convolve(span, self.response, mode="valid").astype(np.float32)  # (size,)
