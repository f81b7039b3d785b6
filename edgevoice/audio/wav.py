"""Reading audio files and validating PCM before it reaches a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevoice.errors import EdgevoiceError


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples as float32 (frames, channels) in [-1, 1] and the file's sample rate."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise EdgevoiceError(f"audio file {path} not found")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise EdgevoiceError(f"cannot read {path} as audio ({exc}); use a WAV, FLAC or OGG file") from exc
    return samples, int(rate)


def write_audio(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    import soundfile

    soundfile.write(str(path), samples, sample_rate, subtype="PCM_16")


def validate_pcm(samples: np.ndarray, sample_rate: int, expected_rate: int, source: str = "audio") -> np.ndarray:
    """Return mono float32 PCM of shape (N,), or raise a one-line error saying how to fix the input.

    Accepts (N,) or (N, 1). Wrong rates and multi-channel audio are refused rather than silently
    converted, so what the model hears is what the caller sent.
    """
    samples = np.asarray(samples)
    if samples.ndim == 2 and samples.shape[1] == 1:
        samples = samples[:, 0]
    if samples.ndim != 1:
        channels = samples.shape[1] if samples.ndim == 2 else "?"
        raise EdgevoiceError(
            f"{source} has {channels} channels (shape {samples.shape}); mono is needed — "
            f"mix it down first, e.g. `sox in.wav -c 1 out.wav`"
        )
    if sample_rate != expected_rate:
        raise EdgevoiceError(
            f"{source} is sampled at {sample_rate} Hz but the model takes {expected_rate} Hz; "
            f"resample it first, e.g. `sox in.wav -r {expected_rate} out.wav`"
        )
    if samples.size == 0:
        raise EdgevoiceError(f"{source} is empty (0 samples)")
    if not np.issubdtype(samples.dtype, np.floating):
        raise EdgevoiceError(f"{source} has dtype {samples.dtype}; pass float PCM in [-1, 1]")
    if not np.all(np.isfinite(samples)):
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise EdgevoiceError(f"{source} contains {bad} NaN or infinite samples; clean the signal first")
    return samples.astype(np.float32, copy=False)
