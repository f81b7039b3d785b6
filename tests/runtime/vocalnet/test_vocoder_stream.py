"""The host side of streaming HiFT: mel/source cache and the speech cross-fade between chunks.

Reference: ``CosyVoice2Model.token2wav`` in VocalNet's bundled ``cosyvoice/cli/model.py`` (HiFT
cache of 8 mel frames / 3840 source samples, ``fade_in_out`` from ``cosyvoice/utils/common.py``
with a Hamming window of 7680), driven by ``tts_direct_update(stream=True)`` from
``omni_speech/infer/vocalnet_streaming.py``; recorded per call in the fixture's
``golden/stream.safetensors``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from vn_fixtures import fixture_params, load_set

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.vocalnet.vocoder_stream import HiftStream, HiftStreamConfig
from edgevoice.weights.vocalnet.cosyvoice import (
    YAML_NAME,
    hift_load,
    read_cosyvoice_yaml,
)


class TorchGraphs:
    """The two vocoder graphs run by the torch modules, behind the numpy interface the runtime uses."""

    def __init__(self, hift) -> None:
        self.hift = hift
        self.decode_calls = 0

    def source(self, mel, phase, noise):
        with torch.no_grad():
            f0, src = self.hift.source(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (mel, phase, noise)))
        return f0.numpy(), src.numpy()

    def decode(self, mel, source):
        self.decode_calls += 1
        with torch.no_grad():
            return self.hift.decode(torch.from_numpy(np.ascontiguousarray(mel)), torch.from_numpy(source)).numpy()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small convolutions: one thread is faster than two fighting over a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=fixture_params())
def vn(request):
    return load_set(request.param)


@pytest.fixture(scope="module")
def graphs(vn):
    return TorchGraphs(hift_load(vn.cosyvoice_dir))


def stream_config(hift) -> HiftStreamConfig:
    return HiftStreamConfig(samples_per_frame=hift.config.samples_per_frame, harmonics=hift.config.harmonics)


def new_mel_frames(vn) -> list[tuple[np.ndarray, bool]]:
    """Per vocoder call: the flow mel past ``token_offset·token_mel_ratio`` (token2wav's slice) and finalize."""
    ratio = int(read_cosyvoice_yaml(vn.cosyvoice_dir / YAML_NAME)["flow"]["token_mel_ratio"])
    return [
        (vn.stream[f"stream_v{c['i']}_flow_mel"].numpy()[:, c["token_offset"] * ratio :], c["finalize"])
        for c in vn.meta["stream"]["vocoder_calls"]
    ]


def close(actual, ref, rel: float) -> tuple[bool, float]:
    actual, ref = np.asarray(actual, np.float64), np.asarray(ref, np.float64)
    return np.allclose(actual, ref, rtol=rel, atol=rel * np.abs(ref).max()), float(np.abs(actual - ref).max())


def test_stream_matches_reference_chunk_by_chunk(vn, graphs):
    """Each yielded chunk equals ``stream_v{i}_wav``; the HiFT mel and the pasted cache source equal
    the recorded ones. The recorded excitation is fed with its cached part zeroed, so the stream's
    own source cache must restore it."""
    stream = HiftStream(graphs, stream_config(graphs.hift))
    chunks, keep = [], stream.config.source_cache_samples
    for i, (mel, final) in enumerate(new_mel_frames(vn)):
        recorded = vn.stream[f"stream_v{i}_hift_source"].numpy()[None, None].copy()
        if i > 0:
            recorded[..., :keep] = 0.0

        def stored_source(mel_in, recorded=recorded):
            return np.zeros((1, mel_in.shape[-1]), np.float32), recorded

        stream.source_fn = stored_source
        audio = stream.push(mel, final)
        call = stream.last_call
        np.testing.assert_array_equal(call.mel[0], vn.stream[f"stream_v{i}_hift_mel"].numpy())
        cache_source = vn.stream[f"stream_v{i}_hift_cache_source"].numpy()
        np.testing.assert_array_equal(call.source[0, 0, : cache_source.size], cache_source)
        ok, err = close(audio, vn.stream[f"stream_v{i}_wav"], 1e-3)
        assert ok, f"chunk {i}: max |Δ| {err:.3g}"
        chunks.append(audio)
    ok, err = close(np.concatenate(chunks), vn.stream["wav_stream"], 1e-3)
    assert ok, f"wav_stream: max |Δ| {err:.3g}"
    assert stream.cache is None, "a final call clears the cache"


def test_cross_fade_and_hold_back_arithmetic():
    """A chunk's first N samples = new·hamming[:N] + previous tail·hamming[N:], the last N are held back."""

    class Ramp:
        def source(self, mel, phase, noise):
            return np.zeros((1, mel.shape[-1]), np.float32), np.zeros((1, 1, mel.shape[-1] * 4), np.float32)

        def decode(self, mel, source):
            return np.arange(mel.shape[-1] * 4, dtype=np.float32)[None] + mel[0, 0, 0]

    cfg = HiftStreamConfig(mel_cache_frames=2, samples_per_frame=4, harmonics=3)
    stream = HiftStream(Ramp(), cfg)
    first = stream.push(np.full((1, 5), 100.0, np.float32), final=False)  # 20 samples made, 8 held back
    np.testing.assert_array_equal(first, 100 + np.arange(12, dtype=np.float32))
    second = stream.push(np.full((1, 3), 0.0, np.float32), final=True)  # 2 cached + 3 new frames = 20 samples
    window = np.hamming(16)
    made = 100 + np.arange(20, dtype=np.float64)  # the cached frames come first, so mel[0,0,0] is 100 again
    expected = made.copy()
    expected[:8] = made[:8] * window[:8] + (100 + np.arange(12, 20)) * window[8:]
    np.testing.assert_allclose(second, expected.astype(np.float32), rtol=0, atol=1e-4)
    assert stream.cache is None


def test_generated_source_is_seeded_and_feeds_the_source_graph(vn, graphs):
    """Without a recorded excitation the host draws SineGen's phases (fundamental at 0) and noise."""
    mel = vn.stream["stream_v0_hift_mel"].numpy()
    cfg = stream_config(graphs.hift)
    runs = [HiftStream(graphs, cfg, seed=seed).push(mel, final=True) for seed in (5, 5, 6)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.abs(runs[0] - runs[2]).max() > 1e-4, "another seed must give other noise"
    phase, noise = HiftStream(graphs, cfg, seed=5).draw_randomness(mel.shape[-1])
    assert phase.shape == (1, cfg.harmonics) and phase[0, 0] == 0 and np.abs(phase).max() <= np.pi
    assert noise.shape == (1, cfg.harmonics, mel.shape[-1] * cfg.samples_per_frame) and noise.dtype == np.float32
    stream = HiftStream(graphs, cfg, seed=5)
    stream.push(mel, final=True)
    ok, err = close(stream.last_call.f0[0], vn.stream["stream_v0_f0"], 1e-4)
    assert ok, f"f0 from the source graph: max |Δ| {err:.3g}"


def test_snapshot_restore_replays_a_chunk(vn, graphs):
    """Restoring the cache taken before a chunk reproduces that chunk exactly (barge-in rollback)."""
    (mel0, _), (mel1, _) = new_mel_frames(vn)[:2]
    stream = HiftStream(graphs, stream_config(graphs.hift), seed=1)
    stream.push(mel0, final=False)
    saved = stream.snapshot()
    state = stream.rng.bit_generator.state
    once = stream.push(mel1, final=False)
    stream.restore(saved)
    stream.rng.bit_generator.state = state
    np.testing.assert_array_equal(stream.push(mel1, final=False), once)


def test_too_short_a_chunk_is_refused_with_advice():
    class Tiny:
        def source(self, mel, phase, noise):
            return np.zeros((1, mel.shape[-1]), np.float32), np.zeros((1, 1, mel.shape[-1] * 4), np.float32)

        def decode(self, mel, source):
            return np.zeros((1, 4), np.float32)  # fewer samples than the 8-sample cross-fade

    stream = HiftStream(Tiny(), HiftStreamConfig(mel_cache_frames=2, samples_per_frame=4, harmonics=3))
    stream.push(np.zeros((1, 3), np.float32), final=False)
    with pytest.raises(EdgevoiceError, match="mel frames"):
        stream.push(np.zeros((1, 3), np.float32), final=False)


def test_vocoder_stream_does_not_import_torch():
    code = "import sys, edgevoice.runtime.vocalnet.vocoder_stream; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)
