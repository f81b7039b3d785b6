"""Freeze-Omni's chunk-wise streaming speech encoder (conv2d subsampling + pre-LN transformer).

One step takes the front end's 19 CMVN'd fbank frames of a 160 ms chunk and emits 4 encoder
frames (25 Hz):

    step(feats (B, 19, 80), pe_index (B,), cached (B,), k_cache_0, v_cache_0, ...)
        -> (out (B, 4, d), pe_index', cached', k_cache_0', v_cache_0', ...)

Subsampling: two Conv2d(k3, s2) + ReLU without padding (19 -> 9 -> 4 frames), then
Linear(d * F' -> d). Input layer: Linear, LayerNorm, ReLU, then ``x * sqrt(d)``. Each block is
pre-LN attention + ReLU FFN; ``after_norm`` closes.

Attention is Transformer-XL style *without* the relative shift: score = ((q + u) . k +
(q + v) . W_pos PE(pos_j)) / sqrt(d_k), where key j of the window is paired with the sinusoid of
position ``first + j``. The reference's position rule (reproduced, drift included): ``pe_index``
counts frames since the start of the turn, wraps modulo ``chunk * (5000 // chunk) - (left + 1) *
chunk`` before use, ``first = max(0, pe_index - (left + 1) * chunk)``, and the keys are the cached
frames plus the 4 new ones. Once the window is full, positions lag the frames by one chunk.

The K/V window of each layer is a fixed (B, heads, chunk * left_chunks, d_k) tensor holding the
most recent frames right-aligned (oldest first, as the reference's concatenated buffer);
``cached`` says how many of its rows are real. Empty rows are masked, which is exactly the
reference's shorter, unmasked key list. Each step concatenates the new keys and keeps the last
``window`` rows: a static slice, no scatter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.streaming import InputSpec, StateSpec, StreamingModule

PE_MAX_LEN = 5000  # the reference's sinusoid table length, which sets where pe_index wraps


@dataclass(frozen=True)
class FoEncoderConfig:
    """Shape of the encoder. Defaults are the published Freeze-Omni sizes."""

    input_dim: int = 80  # fbank bins
    d_model: int = 1024  # attention width (also subsampling channels and output width)
    heads: int = 16  # attention heads
    layers: int = 24  # transformer blocks
    ffn: int = 4096  # feed-forward inner width
    chunk_size: int = 4  # encoder frames per step
    left_chunks: int = 16  # chunks of history in the K/V window
    norm_eps: float = 1e-5  # torch.nn.LayerNorm default, which the reference uses

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of heads={self.heads}")

    @property
    def d_k(self) -> int:  # features per head
        return self.d_model // self.heads

    @property
    def window(self) -> int:  # cached frames per layer (64)
        return self.chunk_size * self.left_chunks

    @property
    def full_chunk(self) -> int:  # (left_chunks + 1) * chunk_size (68), the reference's lag constant
        return self.window + self.chunk_size

    @property
    def pe_wrap(self) -> int:  # pe_index wraps modulo this (4932)
        return self.chunk_size * (PE_MAX_LEN // self.chunk_size) - self.full_chunk

    @property
    def in_frames(self) -> int:  # fbank frames per step (19): receptive field of 4 output frames
        return 4 * self.chunk_size + 3

    @property
    def sub_freq(self) -> int:  # frequency bins left after two k3/s2 convs (19 for 80)
        return ((self.input_dim - 3) // 2 + 1 - 3) // 2 + 1


def sinusoids(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """Interleaved sin/cos rows (..., d_model) for integer positions (...), in float32.

    Same float32 products as the reference's table (position * exp(-2i ln(10000) / d)).
    """
    # Made on the positions' device: a host-to-device copy inside a step cannot be captured in a CUDA graph.
    steps = torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device)
    div = torch.exp(steps * -(math.log(10000.0) / d_model))
    angles = positions.float().unsqueeze(-1) * div  # (..., d / 2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class Conv2dSubsampling4(nn.Module):
    """(B, T, F) -> (B, (T - 3) // 4, d): two unpadded k3/s2 convs, then a Linear over channels x freq."""

    def __init__(self, config: FoEncoderConfig):
        super().__init__()
        d = config.d_model
        self.conv1 = nn.Conv2d(1, d, 3, 2)
        self.conv2 = nn.Conv2d(d, d, 3, 2)
        self.out = nn.Linear(d * config.sub_freq, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x.unsqueeze(1)))))  # (B, d, T', F')
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))  # channel-major, as the reference


class RelChunkAttention(nn.Module):
    """Multi-head attention with pos_bias_u/v and a key-position term; names match the checkpoint."""

    def __init__(self, config: FoEncoderConfig):
        super().__init__()
        d = config.d_model
        self.heads, self.d_k = config.heads, config.d_k
        self.linear_q, self.linear_k, self.linear_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.linear_out = nn.Linear(d, d)
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(config.heads, config.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(config.heads, config.d_k))

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, d_k)
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_k).transpose(1, 2)

    def position_scores(self, q: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        # q: (B, H, T, d_k); pe: (B, K, d) sinusoids of the key positions -> (B, H, T, K)
        p = self.split(self.linear_pos(pe.to(q.dtype)))
        return torch.matmul(q + self.pos_bias_v.unsqueeze(1), p.transpose(-1, -2))

    def attend(self, q, keys, values, position_scores, visible) -> torch.Tensor:
        # q: (B, H, T, d_k); keys/values: (B, H, K, d_k); visible: bool broadcastable to (B, H, T, K)
        content = torch.matmul(q + self.pos_bias_u.unsqueeze(1), keys.transpose(-1, -2))
        scores = (content + position_scores) / math.sqrt(self.d_k)
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(weights, values)  # (B, H, T, d_k)
        return self.linear_out(out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1))

    def step(self, x, pe, visible, k_cache, v_cache):
        # x: (B, C, d); pe: (B, W + C, d); visible: (B, 1, 1, W + C); caches: (B, H, W, d_k)
        q = self.split(self.linear_q(x))
        keys = torch.cat([k_cache, self.split(self.linear_k(x)).to(k_cache.dtype)], dim=2)  # (B, H, W + C, d_k)
        values = torch.cat([v_cache, self.split(self.linear_v(x)).to(v_cache.dtype)], dim=2)
        chunk = x.shape[1]
        out = self.attend(q, keys.to(q.dtype), values.to(q.dtype), self.position_scores(q, pe), visible)
        return out, keys[:, :, chunk:], values[:, :, chunk:]


class EncoderBlock(nn.Module):
    """Pre-LN block; names match the checkpoint (self_attn, feed_forward.w_1/w_2, norm1/norm2)."""

    def __init__(self, config: FoEncoderConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = RelChunkAttention(config)
        self.feed_forward = nn.Sequential()
        self.feed_forward.add_module("w_1", nn.Linear(d, config.ffn))
        self.feed_forward.add_module("relu", nn.ReLU())
        self.feed_forward.add_module("w_2", nn.Linear(config.ffn, d))
        self.norm1 = nn.LayerNorm(d, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=config.norm_eps)


class FoEncoder(StreamingModule):
    """The encoder with its K/V windows and position counters as explicit state."""

    def __init__(self, config: FoEncoderConfig = FoEncoderConfig()):
        super().__init__()
        self.config = config
        d = config.d_model
        self.subsampling = Conv2dSubsampling4(config)
        self.input_linear = nn.Linear(d, d)
        self.input_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.layers))
        self.after_norm = nn.LayerNorm(d, eps=config.norm_eps)

    # --- streaming contract ---------------------------------------------------------------------

    def input_specs(self) -> tuple[InputSpec, ...]:
        c = self.config
        return (InputSpec("feats", ("batch", c.in_frames, c.input_dim)),)

    def output_names(self) -> tuple[str, ...]:
        return ("encoded",)

    def state_specs(self) -> tuple[StateSpec, ...]:
        c = self.config
        cache = (1, c.heads, c.window, c.d_k)
        counters = (StateSpec("pe_index", (1,), 0, torch.int64), StateSpec("cached", (1,), 0, torch.int64))
        return counters + tuple(
            StateSpec(f"{kind}_cache_{i}", cache, 0, self.compute_dtype) for i in range(c.layers) for kind in ("k", "v")
        )

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """fbank (B, T, 80) -> scaled input-layer output (B, (T - 3) // 4, d)."""
        x = self.subsampling(feats.to(self.compute_dtype))
        x = torch.relu(self.input_norm(self.input_linear(x)))
        return x * math.sqrt(self.config.d_model)

    def key_window(self, pe_index: torch.Tensor, cached: torch.Tensor):
        """Sinusoids (B, W + C, d) and visibility (B, 1, 1, W + C) of the step's key slots."""
        c = self.config
        index = torch.where(pe_index >= c.pe_wrap, pe_index - c.pe_wrap, pe_index)  # the reference's modulo
        first = torch.clamp(index - c.full_chunk, min=0)  # (B,)
        slots = torch.arange(c.window + c.chunk_size, device=pe_index.device)  # (W + C,)
        empty = (c.window - cached).unsqueeze(1)  # (B, 1) leading slots without a cached frame
        positions = torch.clamp(first.unsqueeze(1) + slots - empty, min=0)  # (B, W + C)
        visible = (slots >= empty).view(-1, 1, 1, c.window + c.chunk_size)
        return sinusoids(positions, c.d_model), visible, index

    def step(self, feats: torch.Tensor, pe_index: torch.Tensor, cached: torch.Tensor, *caches: torch.Tensor):  # type: ignore[override]
        # feats: (B, 19, 80) CMVN'd; pe_index, cached: (B,) int64; caches: (B, H, W, d_k) each
        c = self.config
        x = self.embed(feats)  # (B, C, d)
        pe, visible, index = self.key_window(pe_index, cached)
        new_caches = []
        for i, block in enumerate(self.blocks):
            attended, k, v = block.self_attn.step(block.norm1(x), pe, visible, caches[2 * i], caches[2 * i + 1])
            x = x + attended
            x = x + block.feed_forward(block.norm2(x))
            new_caches += [k, v]
        out = self.after_norm(x).float()
        return (out, index + c.chunk_size, torch.clamp(cached + c.chunk_size, max=c.window), *new_caches)

    # --- full-sequence reference ----------------------------------------------------------------

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """All chunks at once: (B, 3 + 16 N, 80) -> (B, 4 N, d), with one block-banded mask.

        Each chunk sees itself and the ``window`` frames before it; key positions follow the
        reference's per-chunk rule (frame index, minus one chunk once the window has filled).
        The pe_index wrap (after ~197 s) is left out here.
        """
        c = self.config
        x = self.embed(feats)  # (B, T, d)
        t = x.shape[1]
        frames = torch.arange(t, device=x.device)
        chunk_start = (frames // c.chunk_size) * c.chunk_size  # (T,) first frame of each query's chunk
        visible = (frames[None, :] >= chunk_start[:, None] - c.window) & (frames[None, :] < chunk_start[:, None] + c.chunk_size)
        lagging = (torch.clamp(chunk_start - c.window, min=0) - torch.clamp(chunk_start - c.full_chunk, min=0)) > 0
        pe_now = sinusoids(frames, c.d_model).unsqueeze(0)  # key position = frame
        pe_lag = sinusoids(torch.clamp(frames - c.chunk_size, min=0), c.d_model).unsqueeze(0)  # one chunk behind
        for block in self.blocks:
            attn = block.self_attn
            h = block.norm1(x)
            q, k, v = attn.split(attn.linear_q(h)), attn.split(attn.linear_k(h)), attn.split(attn.linear_v(h))
            positional = torch.where(
                lagging.view(1, 1, t, 1), attn.position_scores(q, pe_lag), attn.position_scores(q, pe_now)
            )
            x = x + attn.attend(q, k, v, positional, visible.view(1, 1, t, t))
            x = x + block.feed_forward(block.norm2(x))
        return self.after_norm(x).float()
