"""Rotary position embedding in the Hugging Face "rotate half" layout.

GGUF files store Llama q/k projections permuted for llama.cpp's interleaved rotation; our
loaders undo that permutation (see ``edgevoice.weights.llm.gguf``), so one rotation serves weights
from GGUF and from Hugging Face directories alike.

cos/sin are computed in the graph from the absolute positions, not looked up in a table: the
positions come from a graph input (the cache write index), and Cos/Sin of a small tensor cost
less than shipping a (max_context, head_dim) table and gathering rows from it.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """cos/sin of shape (B, T, head_dim) for absolute positions (B, T)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        self.base = base
        inv_freq = self._frequencies(head_dim, base)  # (head_dim / 2,)
        # Not a weight: derived from the config, so it stays out of the state dict.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # Module.half()/.to(bfloat16) cast every floating buffer; the frequencies must stay float32
        # (at base 1e6 the smallest is ~1e-6, below fp16's normal range), so recompute them after
        # any cast, on whatever device the buffer moved to.
        result = super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:
            head_dim = 2 * self.inv_freq.shape[0]
            self.inv_freq = self._frequencies(head_dim, self.base).to(self.inv_freq.device)
        return result

    @staticmethod
    def _frequencies(head_dim: int, base: float) -> torch.Tensor:
        exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        return (1.0 / (base**exponent)).float()  # (head_dim / 2,)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: (B, T) int64 -> angles in float32 whatever the compute dtype, since
        # position * frequency loses whole radians in fp16 beyond a few hundred tokens.
        angles = positions.float().unsqueeze(-1) * self.inv_freq  # (B, T, head_dim / 2)
        angles = torch.cat([angles, angles], dim=-1)  # (B, T, head_dim)
        return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, head_dim) by cos/sin (B, T, head_dim)."""
    cos = cos.unsqueeze(1).to(x.dtype)  # (B, 1, T, head_dim)
    sin = sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin
