"""Streaming sample-rate conversion (libsoxr through the ``soxr`` package) and mono mixdown.

Devices run at 44.1 or 48 kHz; the models take 16 kHz in and give 22.05 or 24 kHz out. Audio
arrives in blocks whose size the device chooses, so the resampler must keep its filter state
between blocks: resampling each block on its own would restart the filter at every edge and
click. ``soxr.ResampleStream`` keeps that state, and its streamed output is sample-for-sample
the one-shot result (tests/audio/test_resample.py checks this), so output sample ``k`` always
belongs to time ``k / out_rate`` — what lets two resamplers fed in lockstep stay time-aligned.

Resampling allocates (soxr returns a new array per call), so it never runs inside an audio
callback; the device I/O does it on its pump thread (see ``edgevoice.audio.io``).
"""

from __future__ import annotations

import numpy as np

from edgevoice.errors import EdgevoiceError, MissingDependencyError

# libsoxr's quality presets, cheapest first. "HQ" (20-bit, 95 % bandwidth) is far beyond what
# 16 kHz speech models need; "MQ" is enough for speech and costs less CPU on a Jetson core.
QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")


def import_soxr():
    try:
        import soxr
    except ImportError as exc:
        raise MissingDependencyError.for_module("soxr", "audio", "sample-rate conversion") from exc
    return soxr


class StreamingResampler:
    """Mono float32 resampler that takes chunks of any size and keeps its filter state between them.

    ``process(chunk)`` returns whatever output is ready (possibly nothing for tiny chunks: the
    filter needs look-ahead); ``flush()`` returns the tail at the end of a stream. Concatenating
    every output equals resampling the whole signal at once.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ"):
        if in_rate <= 0 or out_rate <= 0:
            raise EdgevoiceError(f"sample rates must be positive, got {in_rate} -> {out_rate} Hz")
        if quality not in QUALITIES:
            raise EdgevoiceError(f"unknown resampling quality {quality!r}; use one of {', '.join(QUALITIES)}")
        self.in_rate, self.out_rate, self.quality = int(in_rate), int(out_rate), quality
        self.passthrough = self.in_rate == self.out_rate  # no filter, no delay, no soxr needed
        self._stream = None if self.passthrough else import_soxr().ResampleStream(
            self.in_rate, self.out_rate, 1, dtype="float32", quality=quality
        )
        self.samples_in = 0  # input samples consumed so far
        self.samples_out = 0  # output samples produced so far

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Resample the next ``chunk`` (1-D float32); returns the output that is ready, (M,) float32."""
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise EdgevoiceError(f"the resampler takes mono (N,) chunks, got shape {chunk.shape}; mix down first")
        self.samples_in += len(chunk)
        out = chunk.copy() if self.passthrough else self._stream.resample_chunk(chunk)
        self.samples_out += len(out)
        return out

    def flush(self) -> np.ndarray:
        """End of the stream: the output still held back by the filter's look-ahead."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self.samples_out += len(out)
        return out

    def reset(self) -> None:
        """Start a new, unrelated stream (drops the filter history)."""
        if self._stream is not None:
            self._stream.clear()
        self.samples_in = self.samples_out = 0

    @property
    def pending(self) -> int:
        """Output samples owed for the input given so far but not produced yet (the look-ahead latency)."""
        return 0 if self._stream is None else round(self._stream.delay())


def resample(samples: np.ndarray, in_rate: int, out_rate: int, quality: str = "HQ") -> np.ndarray:
    """One-shot resampling of a whole mono signal (files, tests); same result as streaming it."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if in_rate == out_rate:
        return samples.copy()
    return import_soxr().resample(samples, in_rate, out_rate, quality=quality).astype(np.float32, copy=False)


def mixdown(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Average the channels of ``frames`` (N, C) into mono (N,); a 1-D input is returned as is.

    Averaging (not summing) keeps the level of a mono source duplicated on every channel and
    cannot clip. With ``out`` (a float32 (N,) buffer) nothing is allocated.
    """
    frames = np.asarray(frames)
    if frames.ndim == 1:
        return frames
    if frames.ndim != 2 or frames.shape[1] == 0:
        raise EdgevoiceError(f"expected audio frames shaped (samples, channels), got {frames.shape}")
    if frames.shape[1] == 1:
        mono = frames[:, 0]
        if out is None:
            return mono
        out[:] = mono
        return out
    mono = np.sum(frames, axis=1, dtype=np.float32, out=out)
    mono *= np.float32(1.0 / frames.shape[1])
    return mono
