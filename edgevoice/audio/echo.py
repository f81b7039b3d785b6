"""Acoustic echo cancellation of the microphone signal, with what the speaker played as reference.

On open speakers the microphone hears the agent's own voice; without cancellation the VAD
would call it user speech and the agent would barge in on itself. WebRTC's AEC3 (through the
``pywebrtc-audio`` package, Apache-2.0, numpy only) learns the room's echo path from the
reference and subtracts it; research/offline_weights.md §7 measured ~32 dB echo removal.

AEC3 works on 10 ms frames at 16, 32 or 48 kHz; this wrapper accepts chunks of any length and
keeps the remainder for the next call. The reference must be what actually went out, aligned by
absolute position with the microphone (``AudioIO.reference`` and ``read_aligned`` give that).
AEC3 delays its output by ~8 ms (its band-split filters); the wrapper measures that delay once
per rate and drops it, so the output is position-aligned with the microphone input again:
output sample ``k`` is the cleaned microphone sample ``k``.
"""

from __future__ import annotations

import numpy as np

from edgevoice.errors import EdgevoiceError, MissingDependencyError

SUPPORTED_RATES = (16000, 32000, 48000)  # what AEC3 runs at
_latency_by_rate: dict[int, int] = {}  # measured once per process: AEC3's output delay in samples


def import_webrtc():
    try:
        import pywebrtc_audio
    except ImportError as exc:
        raise MissingDependencyError.for_module("pywebrtc-audio", "audio", "echo cancellation") from exc
    return pywebrtc_audio


def measure_latency(sample_rate: int) -> int:
    """AEC3's output delay at ``sample_rate``, found by cross-correlating a noise probe (no echo)."""
    if sample_rate in _latency_by_rate:
        return _latency_by_rate[sample_rate]
    webrtc = import_webrtc()
    probe_canceller = webrtc.EchoCanceller(sample_rate, 1, 0)
    probe = np.random.default_rng(0).standard_normal(sample_rate // 2).astype(np.float32) * 0.1
    silence = np.zeros(len(probe), dtype=np.float32)
    out = probe_canceller.process(probe, silence)  # (N,) whole probe at once: frames are processed in order
    window = slice(len(probe) // 4, len(probe) // 2)
    search = range(sample_rate // 50)  # AEC3's delay is a few ms; look up to 20 ms
    lag = max(search, key=lambda d: float(np.dot(out[window.start + d : window.stop + d], probe[window])))
    _latency_by_rate[sample_rate] = lag
    return lag


class EchoPresence:
    """Whether the microphone hears the speaker at all, from 10 ms block energies.

    AEC3's suppressor cannot tell a headset (no echo) from a room it has not learnt: while the
    agent talks it mutes the near end's first syllables as possible echo, which delayed barge-in
    on a headset by ~1 s. The evidence that there is no echo is plain: the microphone is no
    louder while the speaker plays than its own floor while it is quiet. Only then is the raw
    microphone passed on (AEC3 keeps running, so nothing is lost when echo appears).

    The test is one-sided on purpose: anything that raises the microphone while the speaker plays
    (echo, or the user talking over the agent) keeps the canceller's output, the safe choice.
    """

    ACTIVE_RMS = 0.01  # reference blocks louder than this count as "the speaker plays"
    WINDOW = 100  # blocks (1 s) of each kind kept: a change of device is noticed within ~1 s of speech
    MIN_ACTIVE = 50  # reference-active blocks needed before echo can be declared absent
    RISE = 2.0  # mic RMS while playing may exceed the quiet floor by this factor (6 dB) and still be no echo
    FLOOR_PERCENTILE = 10  # the quiet floor: low percentile, so the user's own speech does not lift it

    def __init__(self, frame: int):
        self.frame = frame
        self._active: list[float] = []  # mic RMS of recent blocks with the speaker playing
        self._quiet: list[float] = []  # mic RMS of recent blocks with the speaker silent
        self.echo_free = False  # True once the speaker is known not to reach the microphone

    def update(self, mic: np.ndarray, reference: np.ndarray) -> bool:
        """Feed whole 10 ms blocks (same length, a multiple of ``frame``); returns ``echo_free``."""
        blocks = len(mic) // self.frame
        mic_rms = np.sqrt(np.mean(mic[: blocks * self.frame].reshape(blocks, -1) ** 2, axis=1))  # (blocks,)
        ref_rms = np.sqrt(np.mean(reference[: blocks * self.frame].reshape(blocks, -1) ** 2, axis=1))
        for level, playing in zip(mic_rms.tolist(), (ref_rms > self.ACTIVE_RMS).tolist()):
            kept = self._active if playing else self._quiet
            kept.append(level)
            del kept[: -self.WINDOW]
        if len(self._active) >= self.MIN_ACTIVE and self._quiet:
            floor = float(np.percentile(self._quiet, self.FLOOR_PERCENTILE))
            self.echo_free = float(np.median(self._active)) <= max(self.RISE * floor, 1e-4)
        return self.echo_free

    def reset(self) -> None:
        self._active, self._quiet, self.echo_free = [], [], False


class EchoCanceller:
    """AEC3 over a stream: ``process(mic, reference)`` in chunks of any length, cleaned mic out.

    The output lags the input by less than one 10 ms frame plus AEC3's ~8 ms (what is not ready
    yet comes out in later calls). ``output_position`` is the microphone position of the next
    output sample.
    """

    def __init__(self, sample_rate: int = 16000, noise_suppression: bool = False, stream_delay_ms: int = 0,
                 pass_through_without_echo: bool = True):
        if sample_rate not in SUPPORTED_RATES:
            raise EdgevoiceError(
                f"echo cancellation runs at {', '.join(map(str, SUPPORTED_RATES))} Hz, not {sample_rate} Hz; "
                f"cancel at the microphone's model rate (16000 Hz) or resample first")
        webrtc = import_webrtc()
        self.sample_rate = sample_rate
        self.frame = sample_rate // 100  # AEC3's 10 ms frame
        if noise_suppression:  # AEC3 + WebRTC noise suppression + high-pass in one pass
            self._aec = webrtc.AudioProcessor(sample_rate, 1, echo_cancellation=True, noise_suppression=True,
                                              stream_delay_ms=stream_delay_ms)
        else:
            self._aec = webrtc.EchoCanceller(sample_rate, 1, stream_delay_ms)
        self.latency = measure_latency(sample_rate)  # samples of AEC3 delay dropped from the output start
        self._mic_tail = np.zeros(self.frame, dtype=np.float32)  # the partial frame kept for the next call
        self._ref_tail = np.zeros(self.frame, dtype=np.float32)
        self._tail = 0  # samples in the tails
        self._to_drop = self.latency  # leading output samples that are AEC3's delay, not audio
        self.input_position = 0  # microphone position of the next input sample
        self.output_position = 0  # microphone position of the next output sample
        self.nonfinite_samples = 0  # NaN/inf input samples replaced by 0
        # No echo heard (a headset): hand on the raw microphone, position-aligned like the output.
        self.presence = EchoPresence(self.frame) if pass_through_without_echo else None
        self._raw = np.zeros(0, dtype=np.float32)  # processed mic samples not yet matched by output

    def process(self, mic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Cancel ``reference``'s echo from ``mic`` (same length, 1-D float32); returns the cleaned samples ready."""
        mic, reference = self._checked(mic, "mic"), self._checked(reference, "reference")
        if len(mic) != len(reference):
            raise EdgevoiceError(
                f"mic and reference must cover the same positions, got {len(mic)} and {len(reference)} samples; "
                f"read them with edgevoice.audio.io.read_aligned")
        self.input_position += len(mic)
        if self._tail:
            mic = np.concatenate([self._mic_tail[: self._tail], mic])
            reference = np.concatenate([self._ref_tail[: self._tail], reference])
        whole = len(mic) // self.frame * self.frame
        self._tail = len(mic) - whole
        self._mic_tail[: self._tail] = mic[whole:]
        self._ref_tail[: self._tail] = reference[whole:]
        if whole == 0:
            return np.zeros(0, dtype=np.float32)
        out = self._aec.process(mic[:whole], reference[:whole])  # (whole,) float32, ~8 ms late
        if self._to_drop:
            dropped = min(self._to_drop, len(out))
            out, self._to_drop = out[dropped:], self._to_drop - dropped
        self.output_position += len(out)
        if self.presence is None:
            return out
        self._raw = np.concatenate([self._raw, mic[:whole]])
        raw, self._raw = self._raw[: len(out)], self._raw[len(out):]  # the mic at the output's positions
        return raw.copy() if self.presence.update(mic[:whole], reference[:whole]) else out

    @property
    def passing_through(self) -> bool:
        """True while no echo is heard and the raw microphone is handed on."""
        return self.presence is not None and self.presence.echo_free

    def reset(self) -> None:
        """Forget the learnt echo path and any buffered input (a new session or a moved device)."""
        self._aec.reset()
        self._tail, self._to_drop = 0, self.latency
        self._raw = np.zeros(0, dtype=np.float32)
        if self.presence is not None:
            self.presence.reset()
        self.input_position = self.output_position = 0

    def _checked(self, samples: np.ndarray, name: str) -> np.ndarray:
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise EdgevoiceError(f"{name} must be mono (N,), got shape {samples.shape}; mix it down first")
        samples = samples.astype(np.float32, copy=False)
        finite = np.isfinite(samples)
        if not finite.all():  # AEC3 turns one NaN into noise for seconds; silence it instead
            self.nonfinite_samples += int(samples.size - np.count_nonzero(finite))
            samples = np.where(finite, samples, np.float32(0.0))
        return samples
