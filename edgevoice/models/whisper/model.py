"""Whisper as two edgevoice components: an encoder step and a decoder step with a KV cache.

    encoder step:  audio (B, window samples), length (B,) -> per decoder layer i:
                   cross_kt_i (B, H, D/H, S), cross_v_i (B, H, S, D/H)
    decoder step:  tokens (B, T), offset (B,), cross_kt_i, cross_v_i for every layer,
                   self_k, self_v (L, B, C, D) -> logits (B, T, V), self_k', self_v'

The encoder graph includes the log-mel front end (see ``LogMel``) and the decoder's cross-attention
key/value projections, so they run once per encode instead of once per token, and hands them over
one pair per layer, already in heads (keys transposed): a step reads them without copying. The decoder's
self-attention cache is a fixed-capacity window (C = the text context, 448 for every Whisper)
written at ``offset``; it is state in the streaming sense (graph input and output). Cross K/V are
plain inputs: they do not change while decoding one window. Greedy choice, suppression of tokens
and stopping are the host's job (``edgevoice.runtime.cascade.asr``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.models.whisper.layers import (
    CrossProjection,
    DecoderBlock,
    EncoderBlock,
    LogMel,
    attend,
    merge_heads,
    split_heads,
)
from edgevoice.streaming import InputSpec, StateSpec, StreamingModule


@dataclass(frozen=True)
class WhisperConfig:
    """Sizes of a Whisper checkpoint; the defaults are tiny.en."""

    n_mels: int = 80  # mel bins of the front end (128 for large-v3)
    n_audio_ctx: int = 1500  # encoder positions: 30 s of 10 ms frames after the stride-2 conv
    width: int = 384  # model width D, shared by encoder and decoder
    n_audio_heads: int = 6  # attention heads of the encoder
    n_audio_layers: int = 4  # encoder blocks
    n_vocab: int = 51864  # token vocabulary (51864 English-only, 51865+ multilingual)
    n_text_ctx: int = 448  # decoder positions = KV cache capacity
    n_text_heads: int = 6  # attention heads of the decoder
    n_text_layers: int = 4  # decoder blocks
    ffn: int = 1536  # MLP hidden width
    sample_rate: int = 16000  # Hz of the PCM the front end takes
    n_fft: int = 400  # STFT size: 25 ms
    hop: int = 160  # STFT hop: 10 ms

    def __post_init__(self) -> None:
        for heads in (self.n_audio_heads, self.n_text_heads):
            if self.width % heads:
                raise ValueError(f"width {self.width} is not divisible by {heads} heads; check the checkpoint config")

    @property
    def n_frames(self) -> int:  # mel frames of one window (the conv stem halves them)
        return 2 * self.n_audio_ctx

    @property
    def window_samples(self) -> int:  # PCM samples of one encoder window (30 s)
        return self.n_frames * self.hop

    @property
    def max_samples(self) -> int:
        # Longest audio whose features match a decoder fed the same audio alone: the last frame's
        # window must not reach the reflect padding at the end of the buffer.
        return self.window_samples - self.n_fft


class WhisperEncoder(nn.Module):
    """Conv stem + sinusoidal positions + pre-norm blocks over mel frames."""

    def __init__(self, c: WhisperConfig):
        super().__init__()
        self.conv1 = nn.Conv1d(c.n_mels, c.width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c.width, c.width, kernel_size=3, stride=2, padding=1)
        self.positions = nn.Parameter(torch.zeros(c.n_audio_ctx, c.width))  # shipped with the weights
        self.layers = nn.ModuleList(EncoderBlock(c.width, c.n_audio_heads, c.ffn) for _ in range(c.n_audio_layers))
        self.final_norm = nn.LayerNorm(c.width)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # mel: (B, n_mels, 2S) -> (B, S, D)
        x = nn.functional.gelu(self.conv1(mel))
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)  # (B, S, D)
        x = x + self.positions.to(x.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)


class WhisperDecoder(nn.Module):
    """Token embedding, learned positions, pre-norm blocks, output tied to the embedding."""

    def __init__(self, c: WhisperConfig):
        super().__init__()
        self.heads = c.n_text_heads
        self.embed = nn.Embedding(c.n_vocab, c.width)
        self.positions = nn.Parameter(torch.zeros(c.n_text_ctx, c.width))
        self.layers = nn.ModuleList(DecoderBlock(c.width, c.n_text_heads, c.ffn) for _ in range(c.n_text_layers))
        self.final_norm = nn.LayerNorm(c.width)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, D) -> (B, T, V)
        return torch.matmul(self.final_norm(x), self.embed.weight.T)

    def forward(self, tokens: torch.Tensor, *cross: torch.Tensor) -> torch.Tensor:
        """Full-sequence call without a cache: tokens (B, T), ``cross`` as ``project_cross`` gives
        it -> logits (B, T, V)."""
        t = tokens.shape[1]
        x = self.embed(tokens) + self.positions[:t]
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        for i, layer in enumerate(self.layers):
            attended = layer.self_attn(layer.self_norm(x), causal)
            x = layer.finish(x, attended, cross[2 * i], cross[2 * i + 1])
        return self.logits(x)


class Whisper(nn.Module):
    """The whole checkpoint: what loaders fill, strictly. Steps below share its submodules."""

    def __init__(self, config: WhisperConfig = WhisperConfig()):
        super().__init__()
        self.config = config
        self.front_end = LogMel(config.sample_rate, config.n_fft, config.hop, config.n_mels, config.n_frames)
        self.encoder = WhisperEncoder(config)
        self.decoder = WhisperDecoder(config)
        self.cross_kv = nn.ModuleList(CrossProjection(config.width, config.n_text_heads)
                                      for _ in range(config.n_text_layers))

    def cross_attention_inputs(self, audio_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return project_cross(self.cross_kv, audio_states)


def project_cross(projections: nn.ModuleList, audio_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every decoder layer's cross-attention keys and values of the encoder output, layer by layer."""
    # audio_states: (B, S, D) -> (keys_0, values_0, keys_1, ...): (B, H, D/H, S) and (B, H, S, D/H)
    return tuple(t for proj in projections for t in proj(audio_states))


def cross_names(layers: int) -> tuple[str, ...]:
    """Graph names of ``project_cross``'s tensors: cross_kt_0, cross_v_0, cross_kt_1, ..."""
    return tuple(name for i in range(layers) for name in (f"cross_kt_{i}", f"cross_v_{i}"))


class WhisperEncoderStep(StreamingModule):
    """Front end + encoder + cross K/V projections; stateless (each window is encoded whole)."""

    def __init__(self, whisper: Whisper):
        super().__init__()
        self.config = whisper.config
        self.front_end = whisper.front_end
        self.encoder = whisper.encoder
        self.cross_kv = whisper.cross_kv
        self.chunk_size = whisper.config.window_samples

    def set_compute_dtype(self, dtype: torch.dtype) -> "WhisperEncoderStep":
        # The front end stays float32: power spectra span ~1e-10..1e6, beyond fp16.
        self.encoder.to(dtype)
        self.cross_kv.to(dtype)
        self.compute_dtype = dtype
        return self

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("audio", ("batch", self.config.window_samples)), InputSpec("length", ("batch",), torch.int64))

    def output_names(self) -> tuple[str, ...]:
        return cross_names(self.config.n_text_layers)

    def state_specs(self) -> tuple[StateSpec, ...]:
        return ()

    def step(self, audio: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # audio: (B, window), length: (B,) -> per layer keys (B, H, D/H, S), values (B, H, S, D/H), float32
        mel = self.front_end(audio, length).to(self.compute_dtype)
        return tuple(t.to(torch.float32) for t in project_cross(self.cross_kv, self.encoder(mel)))

    def forward(self, audio: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.step(audio, length)


class WhisperDecoderStep(StreamingModule):
    """One decoder call over T new tokens at ``offset``, reading and writing the KV cache."""

    def __init__(self, whisper: Whisper):
        super().__init__()
        self.config = whisper.config
        self.decoder = whisper.decoder

    def input_specs(self) -> tuple[InputSpec, ...]:
        c = self.config
        heads, head_width = c.n_text_heads, c.width // c.n_text_heads
        keys, values = ("batch", heads, head_width, c.n_audio_ctx), ("batch", heads, c.n_audio_ctx, head_width)
        shapes = (keys, values) * c.n_text_layers  # in cross_names' order
        cross = tuple(InputSpec(name, shape) for name, shape in zip(cross_names(c.n_text_layers), shapes))
        return (InputSpec("tokens", ("batch", "tokens"), torch.int64), InputSpec("offset", ("batch",), torch.int64), *cross)

    def output_names(self) -> tuple[str, ...]:
        return ("logits",)

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        # Prompts are a few tokens; later steps feed one.
        return {"tokens": (1, 1, self.config.n_text_ctx)}

    def state_specs(self) -> tuple[StateSpec, ...]:
        c = self.config
        cache = (c.n_text_layers, 1, c.n_text_ctx, c.width)
        return (StateSpec("self_k", cache, batch_dim=1), StateSpec("self_v", cache, batch_dim=1))

    def step(self, tokens: torch.Tensor, offset: torch.Tensor, *cross_and_cache: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # cross_and_cache: every layer's (keys, values) as project_cross gives them, then self_k, self_v
        *cross, self_k, self_v = cross_and_cache
        dec, dtype = self.decoder, self.compute_dtype
        t, capacity = tokens.shape[1], self.config.n_text_ctx
        positions = offset[:, None] + torch.arange(t, device=tokens.device)[None]  # (B, T)
        slots = torch.arange(capacity, device=tokens.device)[None, None]  # (1, 1, C)
        # Writing by one-hot matmul instead of ScatterND keeps the graph static and TensorRT-plain.
        place = (slots == positions[:, :, None]).to(dtype)  # (B, T, C)
        keep = 1.0 - place.sum(dim=1)[:, :, None]  # (B, C, 1)
        visible = (slots <= positions[:, :, None])[:, None]  # (B, 1, T, C): causal over the cache
        x = dec.embed(tokens) + dec.positions[positions]  # (B, T, D)
        new_k, new_v = [], []
        for i, layer in enumerate(dec.layers):
            q, k, v = layer.self_attn.project(layer.self_norm(x))
            cache_k = self_k[i].to(dtype) * keep + torch.matmul(place.transpose(1, 2), k)  # (B, C, D)
            cache_v = self_v[i].to(dtype) * keep + torch.matmul(place.transpose(1, 2), v)
            h = dec.heads
            attended = attend(split_heads(q, h), split_heads(cache_k, h), split_heads(cache_v, h), visible)
            x = layer.finish(x, layer.self_attn.out(merge_heads(attended)), cross[2 * i].to(dtype), cross[2 * i + 1].to(dtype))
            new_k.append(cache_k)
            new_v.append(cache_v)
        logits = dec.logits(x).to(torch.float32)
        return logits, torch.stack(new_k).to(torch.float32), torch.stack(new_v).to(torch.float32)

    def forward(self, tokens: torch.Tensor, *cross: torch.Tensor) -> torch.Tensor:
        """Full-sequence call (no cache), the reference the cached steps must match."""
        return self.decoder(tokens, *(t.to(self.compute_dtype) for t in cross)).to(torch.float32)
