"""The token encoder of the CosyVoice2 flow: speech tokens -> frame features (2 frames per token).

Behaviour follows CosyVoice2's ``UpsampleConformerEncoder`` (VocalNet bundles it under
``cosyvoice/transformer/upsample_encoder.py``):

    Linear + LayerNorm + ESPnet relative positions -> pre-lookahead conv (sees 3 future tokens)
    -> conformer blocks (rel-pos attention + SiLU FFN, pre-norm, no conv module, no macaron)
    -> x2 nearest upsample + left-padded conv (k = 2*stride+1)
    -> Linear + LayerNorm + relative positions -> up conformer blocks -> LayerNorm

Attention is block-causal: CosyVoice2Model fixes ``static_chunk_size`` to 2*input_frame_rate
tokens for the first stack and twice that (frames) for the up stack, so a position sees every
position up to the end of its own chunk. Batch 1 without padding is the only case the reference
runs at inference, so no padding mask exists here.

Module and parameter names mirror the checkpoint (``encoder.embed.out.0``, ``encoders.{i}.self_attn
.linear_q`` ...) so ``flow.pt`` loads strictly without renaming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FlowEncoderConfig:
    input_size: int = 512  # token embedding width
    width: int = 512  # attention width; the reference hard-codes 512 for its convs, so it must equal this
    heads: int = 8
    ffn: int = 2048
    blocks: int = 6
    up_blocks: int = 4  # hard-coded in the reference; read from the checkpoint
    pre_lookahead: int = 3
    upsample: int = 2  # token_mel_ratio
    chunk_tokens: int = 50  # static_chunk_size set by CosyVoice2Model (2 * input_frame_rate)


def chunk_bias(length: int, chunk: int, like: torch.Tensor) -> torch.Tensor:
    """[T, T] additive attention bias: 0 where key j lies in query i's chunk or before, -1e10 after.

    Floats instead of integer division keep the graph within the ops TensorRT parses everywhere.
    A -1e10 bias and the reference's -inf fill give the same softmax: exp underflows to exactly 0.
    """
    index = torch.arange(length, device=like.device, dtype=like.dtype)
    chunk_end = (torch.floor(index / chunk) + 1.0) * chunk  # [T] first key index a query cannot see
    visible = index[None, :] < chunk_end[:, None]
    return torch.where(visible, torch.zeros((), dtype=like.dtype), torch.full((), -1e10, dtype=like.dtype))


def relative_positions(length: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """[1, 2T-1, width] ESPnet relative encodings for offsets T-1, T-2, ..., -(T-1).

    Computed from the length instead of a stored table, so the graph has no length limit; the
    values equal the reference's table rows (sin at even, cos at odd channels).
    """
    offsets = (length - 1) - torch.arange(2 * length - 1, device=like.device, dtype=torch.float32)
    div = torch.exp(torch.arange(0, width, 2, device=like.device, dtype=torch.float32) * -(math.log(10000.0) / width))
    angles = offsets[:, None] * div[None, :]  # [2T-1, width/2]
    table = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(2 * length - 1, width)
    return table.to(like.dtype)[None]


class LinearEmbed(nn.Module):
    """Linear + LayerNorm, then the x*sqrt(width) scaling of the relative-position encoder."""

    def __init__(self, input_size: int, width: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(input_size, width), nn.LayerNorm(width, eps=1e-5))
        self.scale = math.sqrt(width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.out(x) * self.scale  # [B, T, W]
        return x, relative_positions(x.shape[1], x.shape[2], x)


class RelPositionAttention(nn.Module):
    """Transformer-XL style attention: content term (q+u)k + position term (q+v)p, rel-shifted."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.linear_q = nn.Linear(width, width)
        self.linear_k = nn.Linear(width, width)
        self.linear_v = nn.Linear(width, width)
        self.linear_out = nn.Linear(width, width)
        self.linear_pos = nn.Linear(width, width, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.head_dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.head_dim)  # [B, T, H, D]

    @staticmethod
    def rel_shift(scores: torch.Tensor) -> torch.Tensor:
        """[B, H, T, 2T-1] -> [B, H, T, T] with out[i, j] = scores[i, T-1-i+j] (offset i-j).

        The pad-and-reshape trick uses only Pad/Reshape/Slice, which every exporter keeps.
        """
        b, h, t, p = scores.shape
        padded = F.pad(scores, (1, 0)).reshape(b, h, p + 1, t)
        return padded[:, :, 1:].reshape(b, h, t, p)[:, :, :, : t]

    def forward(self, x: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q = self._split(self.linear_q(x))
        k = self._split(self.linear_k(x)).transpose(1, 2)  # [B, H, T, D]
        v = self._split(self.linear_v(x)).transpose(1, 2)
        p = self._split(self.linear_pos(pos)).transpose(1, 2)  # [1, H, 2T-1, D]
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))  # [B, H, T, T]
        position = self.rel_shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)))
        scores = (content + position) / math.sqrt(self.head_dim) + bias
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, H, T, D]
        return self.linear_out(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(width, hidden)
        self.w_2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerBlock(nn.Module):
    """Pre-norm attention + FFN residual block (the conformer layer without conv/macaron parts)."""

    def __init__(self, width: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn = RelPositionAttention(width, heads)
        self.feed_forward = FeedForward(width, ffn)
        self.norm_mha = nn.LayerNorm(width, eps=1e-12)
        self.norm_ff = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos, bias)
        return x + self.feed_forward(self.norm_ff(x))


class PreLookahead(nn.Module):
    """Conv over the current + ``lookahead`` future tokens, LeakyReLU, causal k3 conv, residual."""

    def __init__(self, width: int, lookahead: int):
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(width, width, lookahead + 1)
        self.conv2 = nn.Conv1d(width, width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x.transpose(1, 2), (0, self.lookahead))  # [B, W, T + lookahead]
        h = F.pad(F.leaky_relu(self.conv1(h)), (2, 0))
        return self.conv2(h).transpose(1, 2) + x


class Upsample(nn.Module):
    """Nearest x``stride`` repeat, ``2*stride`` zeros on the left, conv k=2*stride+1 (length kept)."""

    def __init__(self, width: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(width, width, 2 * stride + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.repeat_interleave(x.transpose(1, 2), self.stride, dim=2)  # [B, W, stride*T]
        return self.conv(F.pad(h, (2 * self.stride, 0))).transpose(1, 2)


class FlowEncoder(nn.Module):
    """[B, N, input_size] embedded tokens -> [B, upsample*N, width] features."""

    def __init__(self, cfg: FlowEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = LinearEmbed(cfg.input_size, cfg.width)
        self.pre_lookahead_layer = PreLookahead(cfg.width, cfg.pre_lookahead)
        self.encoders = nn.ModuleList(ConformerBlock(cfg.width, cfg.heads, cfg.ffn) for _ in range(cfg.blocks))
        self.up_layer = Upsample(cfg.width, cfg.upsample)
        self.up_embed = LinearEmbed(cfg.width, cfg.width)
        self.up_encoders = nn.ModuleList(ConformerBlock(cfg.width, cfg.heads, cfg.ffn) for _ in range(cfg.up_blocks))
        self.after_norm = nn.LayerNorm(cfg.width, eps=1e-5)

    def forward(self, tokens_embedded: torch.Tensor) -> torch.Tensor:
        x, pos = self.embed(tokens_embedded)  # [B, N, W], [1, 2N-1, W]
        bias = chunk_bias(x.shape[1], self.cfg.chunk_tokens, x)
        x = self.pre_lookahead_layer(x)
        for block in self.encoders:
            x = block(x, pos, bias)
        x, pos = self.up_embed(self.up_layer(x))  # [B, 2N, W]
        bias = chunk_bias(x.shape[1], self.cfg.chunk_tokens * self.cfg.upsample, x)
        for block in self.up_encoders:
            x = block(x, pos, bias)
        return self.after_norm(x)
