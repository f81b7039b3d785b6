"""StreamingResampler: block size never changes the result; mixdown averages channels."""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.audio.resample import StreamingResampler, mixdown, resample
from edgevoice.errors import EdgevoiceError


def sine(rate: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def stream_in_random_blocks(resampler: StreamingResampler, signal: np.ndarray, seed: int) -> np.ndarray:
    rng, pieces, start = np.random.default_rng(seed), [], 0
    while start < len(signal):
        size = int(rng.integers(1, 1500))
        pieces.append(resampler.process(signal[start : start + size]))
        start += size
    pieces.append(resampler.flush())
    return np.concatenate(pieces)


@pytest.mark.parametrize("in_rate,out_rate", [(48000, 16000), (16000, 48000), (22050, 48000), (44100, 16000),
                                              (24000, 48000)])
def test_streaming_in_random_blocks_equals_one_shot(in_rate, out_rate):
    signal = sine(in_rate)
    streamed = stream_in_random_blocks(StreamingResampler(in_rate, out_rate), signal, seed=in_rate + out_rate)
    one_shot = resample(signal, in_rate, out_rate)
    assert len(streamed) == len(one_shot) == round(len(signal) * out_rate / in_rate)
    np.testing.assert_allclose(streamed, one_shot, atol=1e-6)


def test_round_trip_48k_16k_48k_has_no_clicks_at_block_edges():
    # A 440 Hz sine survives 48k -> 16k -> 48k; a restart of the filter at a block edge would
    # show up as a jump far larger than the sine's own sample-to-sample step.
    signal = sine(48000, seconds=2.0)
    down = stream_in_random_blocks(StreamingResampler(48000, 16000), signal, seed=1)
    back = stream_in_random_blocks(StreamingResampler(16000, 48000), down, seed=2)
    assert len(back) == len(signal)
    middle = slice(2000, -2000)  # away from the signal's own start and end transients
    assert np.max(np.abs(back[middle] - signal[middle])) < 2e-3
    max_step = 2 * np.pi * 440 / 48000 * 0.5  # the largest honest step of the sine
    assert np.max(np.abs(np.diff(back[middle]))) < max_step * 1.01


def test_output_is_time_aligned_with_input():
    # Output sample k belongs to time k / out_rate: a click at 0.5 s comes out at 0.5 s.
    impulse = np.zeros(48000, dtype=np.float32)
    impulse[24000] = 1.0
    out = stream_in_random_blocks(StreamingResampler(48000, 16000), impulse, seed=3)
    assert int(np.argmax(np.abs(out))) == 8000


def test_pending_reports_the_held_back_lookahead():
    resampler = StreamingResampler(48000, 16000)
    out = resampler.process(np.zeros(4800, dtype=np.float32))  # 100 ms in
    assert resampler.pending > 0
    assert len(out) + resampler.pending == 1600


def test_same_rate_is_a_copy_without_delay():
    resampler, block = StreamingResampler(16000, 16000), sine(16000)[:100]
    out = resampler.process(block)
    assert np.array_equal(out, block) and out is not block and resampler.pending == 0


def test_bad_arguments_are_user_errors():
    with pytest.raises(EdgevoiceError, match="positive"):
        StreamingResampler(0, 16000)
    with pytest.raises(EdgevoiceError, match="quality"):
        StreamingResampler(48000, 16000, quality="best")
    with pytest.raises(EdgevoiceError, match="mono"):
        StreamingResampler(48000, 16000).process(np.zeros((10, 2), dtype=np.float32))


def test_mixdown_averages_channels():
    left, right = np.full(5, 0.2, dtype=np.float32), np.full(5, 0.6, dtype=np.float32)
    np.testing.assert_allclose(mixdown(np.stack([left, right], axis=1)), np.full(5, 0.4), rtol=1e-6)
    mono = np.arange(4, dtype=np.float32)
    assert mixdown(mono) is mono
    np.testing.assert_array_equal(mixdown(mono[:, None]), mono)


def test_mixdown_into_a_preallocated_buffer():
    frames = np.random.default_rng(0).uniform(-1, 1, (64, 3)).astype(np.float32)
    out = np.empty(64, dtype=np.float32)
    assert mixdown(frames, out=out) is out
    np.testing.assert_allclose(out, frames.mean(axis=1), atol=1e-6)


def test_mixdown_refuses_shapes_that_are_not_frames():
    with pytest.raises(EdgevoiceError, match="channels"):
        mixdown(np.zeros((2, 3, 4), dtype=np.float32))
