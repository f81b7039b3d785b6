"""PCM validation: every bad input gets one clear error, good input passes unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.audio.wav import read_audio, validate_pcm, write_audio
from edgevoice.errors import EdgevoiceError


def test_mono_passes_and_column_is_flattened():
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    assert validate_pcm(x, 16000, 16000) is x
    assert validate_pcm(x[:, None], 16000, 16000).shape == (100,)


@pytest.mark.parametrize(
    "samples, rate, message",
    [
        (np.zeros((100, 2), np.float32), 16000, "2 channels"),
        (np.zeros(100, np.float32), 48000, "48000 Hz but the model takes 16000 Hz"),
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.array([0.0, np.inf], np.float32), 16000, "NaN or infinite"),
        (np.array([0.0, np.nan], np.float32), 16000, "NaN or infinite"),
        (np.zeros(100, np.int16), 16000, "float PCM"),
    ],
)
def test_bad_pcm(samples, rate, message):
    with pytest.raises(EdgevoiceError, match=message):
        validate_pcm(samples, rate, 16000)


def test_roundtrip_and_bad_files(tmp_path):
    path = tmp_path / "a.wav"
    write_audio(path, np.full(160, 0.5, np.float32), 16000)
    samples, rate = read_audio(path)
    assert rate == 16000 and samples.shape == (160, 1) and abs(samples[0, 0] - 0.5) < 1e-4
    (tmp_path / "b.wav").write_bytes(b"not audio at all")
    with pytest.raises(EdgevoiceError, match="cannot read"):
        read_audio(tmp_path / "b.wav")
    with pytest.raises(EdgevoiceError, match="not found"):
        read_audio(tmp_path / "missing.wav")
