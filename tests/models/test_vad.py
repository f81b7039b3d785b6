"""Silero VAD port: identical to the silero-vad package's own TorchScript model, and streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.vad import SileroVad, VadConfig
from edgevoice.recipes.silero_vad import build_silero_vad, upstream_probabilities
from edgevoice.streaming import check_causal, check_streaming_matches_full


def streamed_probabilities(model: SileroVad, audio: np.ndarray) -> np.ndarray:
    chunk = model.config.chunk_samples
    usable = len(audio) - len(audio) % chunk
    streamer = model.streamer()
    x = torch.from_numpy(audio[:usable]).reshape(1, -1)
    return np.concatenate([streamer(x[:, i : i + chunk]).numpy().ravel() for i in range(0, usable, chunk)])


@pytest.fixture(scope="module")
def vad16() -> SileroVad:
    return build_silero_vad(16000)


def test_matches_upstream_on_espeak_speech(vad16, speech_16k):
    ours = streamed_probabilities(vad16, speech_16k)
    theirs = upstream_probabilities(speech_16k, 16000)
    assert len(ours) == len(theirs) > 150  # several seconds, chunk by chunk
    assert np.max(np.abs(ours - theirs)) <= 1e-4
    assert theirs.max() > 0.9 and theirs[:10].max() < 0.2  # real speech found, leading silence not


def test_matches_upstream_on_fixture_recording(vad16, fixture_recording):
    audio, rate = fixture_recording
    assert rate == 16000
    ours = streamed_probabilities(vad16, audio)
    assert np.max(np.abs(ours - upstream_probabilities(audio, 16000))) <= 1e-4


def test_matches_upstream_at_8k(speech_16k):
    model = build_silero_vad(8000)
    audio = speech_16k[::2].copy()  # espeak has no energy above 4 kHz worth keeping
    ours = streamed_probabilities(model, audio)
    assert np.max(np.abs(ours - upstream_probabilities(audio, 8000))) <= 1e-4


def test_streaming_equals_full_sequence(vad16, speech_16k):
    x = torch.from_numpy(speech_16k[: 512 * 60]).reshape(1, -1)
    # Batched convs over all windows round differently from one window at a time (~4e-5).
    check_streaming_matches_full(vad16, x, chunks_per_call=(1, 3, 2), atol=1e-4)


def test_causal(vad16, speech_16k):
    x = torch.from_numpy(speech_16k[: 512 * 40]).reshape(1, -1)
    check_causal(vad16, x, cut_chunks=25, atol=1e-6)


def test_batch_of_sessions_is_independent(vad16, speech_16k):
    one = torch.from_numpy(speech_16k[: 512 * 20]).reshape(1, -1)
    two = torch.cat([one, torch.zeros_like(one)])
    assert torch.allclose(vad16(two)[0], vad16(one)[0], atol=1e-6)


def test_fp16_compute_stays_close(speech_16k):
    model = build_silero_vad(16000).set_compute_dtype(torch.float16)
    ours = streamed_probabilities(model, speech_16k)
    assert np.max(np.abs(ours - upstream_probabilities(speech_16k, 16000))) < 0.05


def test_unsupported_rate_is_refused():
    with pytest.raises(ValueError, match="8000 or 16000"):
        VadConfig(sample_rate=44100)


def test_wrong_weights_are_named(vad16):
    from edgevoice.weights.strict import load_state_strict

    state = dict(vad16.state_dict())
    state["decoder.rnn.weight_ih"] = torch.zeros(3, 3)
    with pytest.raises(EdgevoiceError, match="decoder.rnn.weight_ih"):
        load_state_strict(SileroVad(), state, source="test")
    del state["decoder.rnn.weight_ih"]
    with pytest.raises(EdgevoiceError, match="missing \\['decoder.rnn.weight_ih'\\]"):
        load_state_strict(SileroVad(), state, source="test")
