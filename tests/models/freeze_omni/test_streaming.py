"""The two streaming tests for every Freeze-Omni listen component, on seeded random weights.

Chunked == full: each component's step, fed chunk after chunk, equals its whole-sequence
``forward`` (written independently: one fbank over the whole signal, one banded-mask attention
over all frames, one strided conv, one causal LLM pass). Causal: appending input never changes
earlier outputs. 20 chunks take the encoder past its 64-frame window, into the position lag.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevoice.recipes.freeze_omni.listen import FULL_LISTEN, TINY_LISTEN, random_listen
from edgevoice.recipes.silero_vad import voiced_test_signal

CHUNKS = 20  # > left_chunks + 1: covers a filling and a full, lagging encoder window
# float32 on both sides; the whole-sequence calls batch their matmuls differently (measured <= 2e-6).
ATOL = 1e-4


@pytest.fixture(scope="module")
def listen():
    return random_listen(TINY_LISTEN, seed=3)


@pytest.fixture(scope="module")
def audio(listen) -> torch.Tensor:
    samples = CHUNKS * listen.frontend.config.chunk_samples
    return torch.from_numpy(voiced_test_signal(samples / 16000, seed=1)[:samples]).view(1, -1)


def run_steps(module, pieces: list[torch.Tensor]) -> torch.Tensor:
    streamer = module.streamer(pieces[0].shape[0])
    return torch.cat([streamer(p) for p in pieces], dim=1)


def frontend_pieces(listen, audio):
    chunk = listen.frontend.config.chunk_samples
    return [audio[:, i : i + chunk] for i in range(0, audio.shape[1], chunk)]


def encoder_pieces(listen, feats: torch.Tensor):
    fb = listen.frontend.config
    return [feats[:, i : i + fb.out_frames] for i in range(0, feats.shape[1] - fb.overlap_frames, fb.new_frames)]


@torch.no_grad()
def test_frontend_streams_like_the_whole_signal(listen, audio):
    fb = listen.frontend.config
    full = listen.frontend(audio)  # (1, 3 + 16 N, 80)
    streamed = run_steps(listen.frontend, frontend_pieces(listen, audio))  # (1, 19 N, 80)
    # each step re-emits the previous chunk's last 3 frames first; drop those repeats
    new_rows = torch.cat([streamed[:, :fb.out_frames]] + [streamed[:, i * fb.out_frames + fb.overlap_frames : (i + 1) * fb.out_frames]
                                                           for i in range(1, CHUNKS)], dim=1)
    assert (new_rows - full).abs().max() <= ATOL * full.abs().max()
    short = listen.frontend(audio[:, : audio.shape[1] // 2])
    assert torch.equal(short, full[:, : short.shape[1]])


@torch.no_grad()
def test_encoder_streams_like_the_whole_sequence(listen, audio):
    feats = listen.frontend(audio)
    full = listen.encoder(feats)  # (1, 4 N, d)
    streamed = run_steps(listen.encoder, encoder_pieces(listen, feats))
    assert full.shape == streamed.shape == (1, 4 * CHUNKS, listen.encoder.config.d_model)
    assert (full - streamed).abs().max() <= ATOL * full.abs().max()


@torch.no_grad()
def test_encoder_is_causal(listen, audio):
    feats = listen.frontend(audio)
    cut = 3 + 16 * 9
    short, long = listen.encoder(feats[:, :cut]), listen.encoder(feats)
    assert (short - long[:, : short.shape[1]]).abs().max() <= 1e-6 * long.abs().max()
    streamed = run_steps(listen.encoder, encoder_pieces(listen, feats))
    other = feats.clone()
    other[:, cut:] = torch.randn_like(other[:, cut:])  # change only the future
    streamed_other = run_steps(listen.encoder, encoder_pieces(listen, other))
    assert torch.equal(streamed[:, : short.shape[1]], streamed_other[:, : short.shape[1]])
    assert not torch.allclose(streamed[:, short.shape[1] :], streamed_other[:, short.shape[1] :])


@torch.no_grad()
def test_adapter_streams_like_the_whole_sequence_and_is_causal(listen):
    torch.manual_seed(0)
    encoded = torch.randn(2, 4 * CHUNKS, listen.encoder.config.d_model)
    full = listen.adapter(encoded)
    streamed = run_steps(listen.adapter, [encoded[:, i : i + 4] for i in range(0, encoded.shape[1], 4)])
    assert full.shape == streamed.shape == (2, 2 * CHUNKS, listen.llm.config.hidden)
    assert (full - streamed).abs().max() <= ATOL * full.abs().max()
    short = listen.adapter(encoded[:, :36])
    assert (short - full[:, :18]).abs().max() <= 1e-6 * full.abs().max()


@torch.no_grad()
def test_listen_llm_streams_like_one_pass_and_is_causal(listen):
    from edgevoice.models.freeze_omni.state_head import ListenLlmStep

    step = ListenLlmStep(listen.llm, listen.state_head)
    torch.manual_seed(1)
    embeds = torch.randn(1, 33 + 2 * 10, listen.llm.config.hidden) * 0.05
    full = step(embeds)  # (1, T, hidden)
    caches, position, last = step.init_state(), torch.zeros(1, dtype=torch.long), []
    for piece in [embeds[:, :33]] + list(embeds[:, 33:].split(2, dim=1)):
        _, hidden, state_logits, probs, *caches = step.step(piece, position, *caches)
        position = position + piece.shape[1]
        last.append((int(position) - 1, hidden[0]))
        assert torch.allclose(probs.sum(-1), torch.ones(1)) and state_logits.shape == (1, 4)
    for row, hidden in last:
        assert (hidden - full[0, row]).abs().max() <= ATOL * full.abs().max()
    short = step(embeds[:, :40])
    assert (short - full[:, :40]).abs().max() <= 1e-5 * full.abs().max()


def test_random_listen_is_seeded(listen):
    again = random_listen(TINY_LISTEN, seed=3)
    other = random_listen(TINY_LISTEN, seed=4)
    weight = lambda m: m.encoder.blocks[0].self_attn.linear_q.weight  # noqa: E731
    assert torch.equal(weight(again), weight(listen)) and not torch.equal(weight(other), weight(listen))


def test_full_size_shapes_on_meta_device():
    full = random_listen(FULL_LISTEN, device="meta")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # The published audiollm/final.pt holds 375.96 M values (research notes): encoder + adapter +
    # prompt and task embeddings (20 x 3584, training-only, not built) + state head.
    audiollm = count(full.encoder) + count(full.adapter) + full.prompt_embeddings.numel() + 20 * 3584 + count(full.state_head)
    assert round(audiollm / 1e4) == 37596
    assert full.prompt_embeddings.shape == (25, 3584) and full.state_head.linear.weight.shape == (4, 3584)
    assert full.llm.config.kv_heads == 4 and full.llm.config.head_dim == 128
    assert full.encoder.state_specs()[2].shape == (1, 16, 64, 64)
    assert np.isclose(count(full.llm) / 1e9, 7.6, atol=0.05)  # Qwen2-7B with untied head
