"""Host side of the Freeze-Omni speech path: token choice, token loop, codec FIFO, quiet cuts."""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.freeze_omni.speech_tokens import (
    CodecStreamConfig,
    CodecTokenFifo,
    SpeechAudioStream,
    SpeechTokenRule,
    TopKSampler,
    apply_repetition_penalty,
    choose_greedy,
    generate_speech_tokens,
    quiet_cut,
)

SOS, EOS = 1025, 1026


def test_top1_is_greedy_and_top2_draws_the_renormalized_pair():
    logits = np.array([0.0, 2.0, 1.0, -1.0], dtype=np.float32)
    assert TopKSampler(1)(logits) == choose_greedy(logits) == 1
    sampler = TopKSampler(2, seed=7)
    draws = np.array([sampler(logits) for _ in range(4000)])
    assert set(draws.tolist()) == {1, 2}
    expected = np.exp(2.0) / (np.exp(2.0) + np.exp(1.0))  # softmax over the top two only
    assert abs(np.mean(draws == 1) - expected) < 0.03
    with pytest.raises(EdgevoiceError, match="top-k must be at least 1"):
        TopKSampler(0)


def test_repetition_penalty_divides_once_per_occurrence():
    logits = np.array([4.0, -2.0, 3.0, 1.0], dtype=np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 1, 3, 0], window=4, penalty=2.0)
    # window = [1, 1, 3, 0]: token 1 twice (a negative logit grows towards 0), 3 and 0 once, 2 untouched
    assert out.tolist() == [2.0, -0.5, 3.0, 0.5]
    assert apply_repetition_penalty(logits, [0, 1], window=-1, penalty=2.0) is logits


def scripted_step(sequence):
    """A fake decoder step: logits that make ``sequence`` the greedy choices, recording what it is fed."""
    fed = []

    def step(token: int) -> np.ndarray:
        fed.append(token)
        logits = np.zeros(1028, dtype=np.float32)
        logits[sequence[min(len(fed) - 1, len(sequence) - 1)]] = 5.0
        return logits

    return step, fed


def test_token_loop_starts_with_sos_and_stops_at_eos_without_emitting_it():
    step, fed = scripted_step([5, 6, 7, EOS, 8])
    assert list(generate_speech_tokens(step, SpeechTokenRule(SOS, EOS))) == [5, 6, 7]
    assert fed == [SOS, 5, 6, 7]


def test_token_loop_stops_after_max_tokens():
    step, fed = scripted_step([9])
    assert list(generate_speech_tokens(step, SpeechTokenRule(SOS, EOS, max_tokens=4))) == [9, 9, 9, 9]
    assert len(fed) == 4


def test_penalty_window_covers_sos_and_the_tokens_chosen_so_far():
    def step(token: int) -> np.ndarray:
        logits = np.full(1028, -1.0, dtype=np.float32)
        logits[[3, SOS]] = [2.0, 2.0 + 1e-3]  # SOS barely wins unless penalized
        return logits

    rule = SpeechTokenRule(SOS, EOS, max_tokens=2, penalty_window=1, penalty=1.1)
    assert list(generate_speech_tokens(step, rule)) == [3, SOS]  # SOS penalized at step 1 only


def window_sizes(tokens: int, config: CodecStreamConfig = CodecStreamConfig()):
    fifo = CodecTokenFifo(config)
    windows = [w for t in range(tokens) if (w := fifo.push(t)) is not None]
    last = fifo.finish()
    return [(len(w.tokens), w.skip, w.drop) for w in windows] + ([(len(last.tokens), last.skip, last.drop)] if last else [])


def test_fifo_windows_follow_the_reference():
    assert window_sizes(50) == [(50, 0, 10), (20, 10, 0)]
    assert window_sizes(110) == [(50, 0, 10), (60, 10, 10), (40, 10, 0)]
    assert window_sizes(12) == [(12, 0, 0)]
    assert window_sizes(0) == []
    assert window_sizes(40, CodecStreamConfig(first_chunk=20)) == [(30, 0, 10), (30, 10, 0)]
    with pytest.raises(EdgevoiceError, match="at least 1 token"):
        CodecStreamConfig(padding=0)


def test_audio_stream_emits_every_token_once_in_order():
    """With a codec that writes each token's id into its hop of samples, the output is the ids in order."""
    hop = 600

    def fake_codec(tokens: np.ndarray) -> np.ndarray:
        return np.repeat(tokens.astype(np.float32), hop)

    tokens = np.arange(1, 131)
    stream = SpeechAudioStream(fake_codec, CodecStreamConfig(quiet_threshold=1e9))  # cut in every chunk
    pieces = [p for t in tokens if (p := stream.push(int(t))) is not None] + [stream.finish()]
    assert len(pieces) > 2
    assert np.array_equal(np.concatenate(pieces), np.repeat(tokens.astype(np.float32), hop))


def test_quiet_cut_splits_at_the_quietest_sample_of_the_second_half():
    rng = np.random.default_rng(0)
    pcm = (0.5 * rng.standard_normal(24000)).astype(np.float32)
    pcm[15000:18000] = 0.001
    pcm[16500] = 0.0
    held = np.ones(10, dtype=np.float32)
    rest, emitted = quiet_cut(held, pcm, window=2401, threshold=0.01)
    assert emitted is not None and len(emitted) == 10 + 16500 and np.array_equal(rest, pcm[16500:])
    rest, emitted = quiet_cut(held, pcm, window=2401, threshold=0.0001)  # not quiet enough: hold it all
    assert emitted is None and len(rest) == 10 + 24000
    rest, emitted = quiet_cut(held, pcm[:1000], window=2401, threshold=1.0)  # shorter than the window
    assert emitted is None and len(rest) == 1010
