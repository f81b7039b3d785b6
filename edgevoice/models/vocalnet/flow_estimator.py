"""The velocity estimator of the CosyVoice2 flow: the causal 1-D U-Net ``ConditionalDecoder``.

Behaviour follows ``cosyvoice/flow/decoder.py`` (``ConditionalDecoder(causal=True)``) and the
matcha-tts / diffusers blocks it builds on (``SinusoidalPosEmb``, ``TimestepEmbedding``,
``ResnetBlock1D``, ``BasicTransformerBlock`` with plain LayerNorm and GELU feed-forward):

    t -> sinusoid(320) -> Linear/SiLU/Linear -> time embedding (4*channels[0])
    [x | mu | spks repeated | cond] (320 ch) -> down levels (resnet, transformers, causal conv or /2)
    -> mid blocks (resnet, transformers) -> up levels (skip concat, resnet, transformers, conv or x2)
    -> causal block -> 1x1 conv -> velocity [B, 80, T]

Attention is block-causal with ``chunk_frames`` (CosyVoice2Model sets 100 frames) and a -1e10
additive bias, as the reference does. Modules the reference keeps only as parameterless list slots
(Transpose, Dropout, activations) are ``nn.Identity`` placeholders here so that the checkpoint's
indices (``block.0``, ``block.2``, ``ff.net.2``, ``mlp.1``) load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgevoice.errors import EdgevoiceError
from edgevoice.models.vocalnet.flow_encoder import chunk_bias


@dataclass(frozen=True)
class EstimatorConfig:
    in_channels: int = 320  # x, mu, spks, cond: 4 x mel bins
    out_channels: int = 80
    channels: tuple[int, ...] = (256,)
    head_dim: int = 64
    heads: int = 8
    blocks: int = 4  # transformer blocks per level
    mid_blocks: int = 12
    act_fn: str = "gelu"
    chunk_frames: int = 100  # static_chunk_size set by CosyVoice2Model


def timestep_sinusoids(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] -> [B, dim]: sin | cos of 1000*t at geometric frequencies (matcha's SinusoidalPosEmb)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = 1000 * t[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class CausalConv1d(nn.Conv1d):
    """Conv with ``kernel-1`` zeros on the left only: output t sees inputs <= t."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class CausalBlock(nn.Module):
    """masked x -> causal conv k3 -> LayerNorm over channels -> Mish -> masked."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.block = nn.ModuleList([CausalConv1d(dim, dim_out, 3), nn.Identity(), nn.LayerNorm(dim_out)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.block[0](x * mask)  # [B, C, T]
        h = self.block[2](h.transpose(1, 2)).transpose(1, 2)
        return F.mish(h) * mask


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = CausalBlock(dim, dim_out)
        self.block2 = CausalBlock(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(time)[:, :, None]
        return self.block2(h, mask) + self.res_conv(x * mask)


class Attention(nn.Module):
    """Multi-head self-attention, bias-free q/k/v, scale head_dim^-0.5, additive mask bias."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]

        q, k, v = heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (self.head_dim ** -0.5) + bias
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, -1))


class GeluProjection(nn.Module):
    def __init__(self, dim: int, hidden: int, approximate: str):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


_GELU_APPROXIMATION = {"gelu": "none", "gelu-approximate": "tanh"}  # matcha FeedForward act_fn -> F.gelu


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + GELU FFN (x4), both residual; the timestep is not used."""

    def __init__(self, dim: int, heads: int, head_dim: int, act_fn: str):
        super().__init__()
        if act_fn not in _GELU_APPROXIMATION:
            raise EdgevoiceError(f"estimator act_fn {act_fn!r} is not supported (known: {sorted(_GELU_APPROXIMATION)})")
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Module()
        self.ff.net = nn.ModuleList([GeluProjection(dim, 4 * dim, _GELU_APPROXIMATION[act_fn]), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), bias)
        h = self.norm3(x)
        for layer in self.ff.net:
            h = layer(h)
        return x + h


class Resample(nn.Module):
    """The non-final down (/2, k3 s2) or up (x2, transposed k4 s2) step between U-Net levels."""

    def __init__(self, dim: int, up: bool):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1) if up else nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Estimator(nn.Module):
    """(x, mask, mu, t, spks, cond) -> velocity [B, out_channels, T]; shapes as in the reference."""

    def __init__(self, cfg: EstimatorConfig):
        super().__init__()
        self.cfg = cfg
        ch = tuple(cfg.channels)
        time_dim = 4 * ch[0]
        self.time_mlp = nn.Module()
        self.time_mlp.linear_1 = nn.Linear(cfg.in_channels, time_dim)
        self.time_mlp.linear_2 = nn.Linear(time_dim, time_dim)
        self.down_blocks = nn.ModuleList()
        previous = cfg.in_channels
        for i, out in enumerate(ch):
            last = i == len(ch) - 1
            resample = CausalConv1d(out, out, 3) if last else Resample(out, up=False)
            self.down_blocks.append(nn.ModuleList([ResnetBlock(previous, out, time_dim), self._transformers(out), resample]))
            previous = out
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([ResnetBlock(ch[-1], ch[-1], time_dim), self._transformers(ch[-1])]) for _ in range(cfg.mid_blocks)
        )
        up_ch = ch[::-1] + (ch[0],)
        self.up_blocks = nn.ModuleList()
        for i in range(len(up_ch) - 1):
            out, last = up_ch[i + 1], i == len(up_ch) - 2
            resample = CausalConv1d(out, out, 3) if last else Resample(out, up=True)
            self.up_blocks.append(nn.ModuleList([ResnetBlock(2 * up_ch[i], out, time_dim), self._transformers(out), resample]))
        self.final_block = CausalBlock(ch[0], ch[0])
        self.final_proj = nn.Conv1d(ch[0], cfg.out_channels, 1)

    def _transformers(self, dim: int) -> nn.ModuleList:
        cfg = self.cfg
        return nn.ModuleList(TransformerBlock(dim, cfg.heads, cfg.head_dim, cfg.act_fn) for _ in range(cfg.blocks))

    def _attend(self, x: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        h = x.transpose(1, 2)  # [B, T, C]
        bias = chunk_bias(h.shape[1], self.cfg.chunk_frames, h)
        for block in blocks:
            h = block(h, bias)
        return h.transpose(1, 2)

    def forward(self, x, mask, mu, t, spks, cond) -> torch.Tensor:
        """x, mu, cond [B, 80, T]; mask [B, 1, T]; t [B]; spks [B, 80]."""
        time = self.time_mlp.linear_2(F.silu(self.time_mlp.linear_1(timestep_sinusoids(t, self.cfg.in_channels))))
        h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.shape[2]), cond], dim=1)  # [B, 320, T]
        skips, masks = [], [mask]
        for resnet, transformers, down in self.down_blocks:
            h = self._attend(resnet(h, masks[-1], time), transformers)
            skips.append(h)
            h = down(h * masks[-1])
            masks.append(masks[-1][:, :, ::2])
        masks.pop()
        for resnet, transformers in self.mid_blocks:
            h = self._attend(resnet(h, masks[-1], time), transformers)
        for resnet, transformers, up in self.up_blocks:
            mask_up, skip = masks.pop(), skips.pop()
            h = torch.cat([h[:, :, : skip.shape[-1]], skip], dim=1)
            h = self._attend(resnet(h, mask_up, time), transformers)
            h = up(h * mask_up)
        return self.final_proj(self.final_block(h, mask_up) * mask_up) * mask
