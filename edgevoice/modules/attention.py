"""Grouped-query self-attention over a fixed-capacity KV cache written at a position input.

The cache of one layer is (B, kv_heads, capacity, head_dim). A step with T new tokens at
absolute positions ``position + [0, T)`` writes their keys/values into those cache rows with
``scatter`` (ONNX ScatterElements: static shapes, parsed by TensorRT 10.3), then attends over
the whole capacity with a mask that shows each query the keys at index <= its own position.
Rows past that index may hold stale entries from a longer, abandoned continuation: the mask
hides them, which is what makes rolling back a conversation as cheap as moving ``position``.

Positions are per batch row (B,), so sessions at different lengths share one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.modules.rope import apply_rotary


@dataclass(frozen=True)
class AttentionShape:
    """Head layout of one attention layer."""

    hidden: int  # model width (input and output features)
    heads: int  # query heads
    kv_heads: int  # key/value heads; heads % kv_heads == 0 (grouped-query attention)
    head_dim: int  # features per head
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v; Llama/SmolLM do not

    @property
    def groups(self) -> int:  # query heads sharing one key/value head
        return self.heads // self.kv_heads


def visible_keys(positions: torch.Tensor, capacity: int) -> torch.Tensor:
    """Boolean mask (B, 1, T, capacity): query t sees cache index j iff j <= positions[b, t]."""
    keys = torch.arange(capacity, device=positions.device)  # (C,)
    return (keys.view(1, 1, 1, capacity) <= positions.unsqueeze(1).unsqueeze(-1))


def write_cache(cache: torch.Tensor, new: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Return ``cache`` (B, H, C, D) with ``new`` (B, H, T, D) written at rows ``positions`` (B, T).

    Out-of-place on purpose: the caller returns the result as a graph output (state is never
    mutated in place, see ``edgevoice.streaming``).
    """
    b, h, t, d = new.shape
    index = positions.view(b, 1, t, 1).expand(b, h, t, d)  # (B, H, T, D)
    return cache.scatter(2, index, new)


class CachedSelfAttention(nn.Module):
    """Llama/Qwen2 attention; parameter names match Hugging Face (q_proj, k_proj, v_proj, o_proj)."""

    def __init__(self, shape: AttentionShape):
        super().__init__()
        if shape.heads % shape.kv_heads:
            raise ValueError(f"{shape.heads} query heads cannot share {shape.kv_heads} kv heads evenly")
        self.shape = shape
        inner, kv_inner = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        self.q_proj = nn.Linear(shape.hidden, inner, bias=shape.qkv_bias)
        self.k_proj = nn.Linear(shape.hidden, kv_inner, bias=shape.qkv_bias)
        self.v_proj = nn.Linear(shape.hidden, kv_inner, bias=shape.qkv_bias)
        self.o_proj = nn.Linear(inner, shape.hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: (B, T, hidden); cos/sin: (B, T, head_dim); positions: (B, T); mask: (B, 1, T, C)
        # k_cache/v_cache: (B, kv_heads, C, head_dim)
        s = self.shape
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, s.heads, s.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k_cache = write_cache(k_cache, k.to(k_cache.dtype), positions)
        v_cache = write_cache(v_cache, v.to(v_cache.dtype), positions)

        # Grouped-query attention without repeating K/V: query heads h = kv * groups + g share
        # kv head `kv` (Hugging Face's repeat_kv order), so fold the groups into the query rows.
        capacity = k_cache.shape[2]
        q = q.reshape(b, s.kv_heads, s.groups * t, s.head_dim)  # (B, KV, G*T, D)
        keys, values = k_cache.to(q.dtype), v_cache.to(q.dtype)
        scores = torch.matmul(q, keys.transpose(-1, -2)) * (s.head_dim**-0.5)  # (B, KV, G*T, C)
        group_mask = mask.unsqueeze(2).expand(b, 1, s.groups, t, capacity).reshape(b, 1, s.groups * t, capacity)
        # A finite floor (not -inf) keeps fp16 graphs free of inf/NaN; index 0 is always visible,
        # so no row is fully masked.
        scores = scores.masked_fill(~group_mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(weights, values)  # (B, KV, G*T, D)
        out = out.view(b, s.heads, t, s.head_dim).transpose(1, 2).reshape(b, t, s.heads * s.head_dim)
        return self.o_proj(out), k_cache, v_cache
