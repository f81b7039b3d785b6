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


class EchoCanceller:
    """AEC3 over a stream: ``process(mic, reference)`` in chunks of any length, cleaned mic out.

    The output lags the input by less than one 10 ms frame plus AEC3's ~8 ms (what is not ready
    yet comes out in later calls). ``output_position`` is the microphone position of the next
    output sample.
    """

    def __init__(self, sample_rate: int = 16000, noise_suppression: bool = False, stream_delay_ms: int = 0):
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
        return out

    def reset(self) -> None:
        """Forget the learnt echo path and any buffered input (a new session or a moved device)."""
        self._aec.reset()
        self._tail, self._to_drop = 0, self.latency
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
