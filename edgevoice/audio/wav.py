"""Reading audio files and validating PCM before it reaches a model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgevoice.errors import EdgevoiceError

# Float PCM peaking above this is not [-1, 1] audio: integer samples saved as float, or a gain
# gone wrong. Between full scale and this the samples are clipping, which the input path counts.
FAR_OUTSIDE_FULL_SCALE = 2.0
_STREAMED_SIZES = (0, 0xFFFFFFFF)  # what writers put in a WAV header when they cannot seek back


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
    _check_complete(path, samples.shape[1], int(rate))
    return samples, int(rate)


def _check_complete(path: Path, channels: int, rate: int) -> None:
    """Refuse a WAV whose data is shorter than its header says: libsndfile reads what is there, silently."""
    extent = _wav_data_extent(path)
    if extent is None:
        return
    declared, present, align = extent
    if declared in _STREAMED_SIZES or present >= declared:
        return
    align = align or 2 * channels
    raise EdgevoiceError(
        f"{path} is truncated: its header promises {declared // align / rate:.2f} s of audio but the file "
        f"holds {max(present, 0) // align / rate:.2f} s; copy or record it again"
    )


def _wav_data_extent(path: Path) -> tuple[int, int, int] | None:
    """(data bytes the header declares, data bytes present, block align) of a RIFF/WAVE file, else None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        align = 0
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            kind, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind == b"data":
                return length, size - f.tell(), align
            body = f.read(length + (length & 1))  # chunks are padded to even sizes
            if kind == b"fmt ":
                align = int.from_bytes(body[12:14], "little")


def check_range(samples: np.ndarray, source: str = "audio") -> None:
    """Refuse float PCM far outside [-1, 1] (clipping just above full scale is counted later, not refused)."""
    peak = float(np.max(np.abs(samples))) if np.size(samples) else 0.0
    if peak > FAR_OUTSIDE_FULL_SCALE:
        raise EdgevoiceError(
            f"{source} peaks at {peak:.3g}, far outside float PCM's [-1, 1] (integer samples stored as float?); "
            f"scale it first, e.g. `sox in.wav -b 16 out.wav gain -n -1`"
        )


def check_writable(path: str | Path, flag: str = "--output", audio: bool = True) -> Path:
    """Check before any work that ``path`` can be written (as audio, with ``audio``): its folder exists and is writable."""
    import soundfile

    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise EdgevoiceError(f"{flag} {path} is a directory; name a file in it, e.g. {path / 'reply.wav'}")
    if not folder.is_dir():
        raise EdgevoiceError(f"{flag} {path}: the folder {folder} does not exist; create it or choose another {flag}")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise EdgevoiceError(f"{flag} {path} is not writable; choose another {flag}")
    if audio and path.suffix[1:].upper() not in soundfile.available_formats():
        raise EdgevoiceError(f"{flag} {path}: unknown audio format '{path.suffix}'; name a .wav file")
    return path


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
