"""Decoder-only LLM of the Llama family (Llama, SmolLM, Qwen2) as streaming components.

One ``LlmModel`` holds the weights (parameter names as in Hugging Face checkpoints, so a
safetensors directory loads one to one). An ``LlmStep`` view of it is exported as a graph:

    llm: step(input_ids (B, tokens), position (B,), k_cache_0, v_cache_0, ...)
         -> (logits (B, vocab), hidden (B, hidden), k_cache_0', v_cache_0', ...)   tokens 1..64

The cascade ships that one graph for prompt chunks and one-token decode steps (TensorRT gets a
profile for each role). ``LlmStep(tokens=1)`` is the same step with a static token dim, as packages
made before that shipped it (``llm_decode``, beside ``llm_prefill``).

``position`` is the absolute index of the first new token: its keys/values are written at cache
rows position..position+tokens-1. Each layer has its own k and v state (B, kv_heads, max_context,
head_dim), k_cache_0, v_cache_0, k_cache_1 ...: one stacked (layers, ...) tensor costs a Split
and a Concat of the whole cache per step, 40% of a decode step on onnxruntime CPU at 1024
tokens (measured). The host keeps position + tokens <= max_context (``edgevoice.runtime.llm``).
With ``cache_step`` the cache's capacity is a dynamic dim, "context" (cache_step..max_context):
the host starts it at cache_step rows and grows it a step at a time, because attention and the
cache writes cost in proportion to the capacity, not to the tokens held (a SmolLM2-135M decode
step on 2 CPU cores: 14.7 ms at 1024 rows, 10.9 ms at 256). Without it the capacity is fixed at
max_context, as every package made before it has it.
Only the last position's logits leave the graph (the host samples one token per step), and
the last hidden state after the final norm (the input of the LM head) comes with them, for
recipes that feed hidden states onwards (Freeze-Omni's speech decoder).

A step can also take input embeddings (B, tokens, hidden) instead of ids, for models fed by a
speech adapter (``LlmStep(..., inputs="embeds")``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.modules.attention import (
    AttentionShape,
    CachedSelfAttention,
    visible_keys,
)
from edgevoice.modules.norm import RmsNorm
from edgevoice.modules.rope import RotaryEmbedding
from edgevoice.streaming import InputSpec, StateSpec, StreamingModule

CONTEXT_DIM = "context"  # the named capacity dim of a growing KV cache (``LlmStep(cache_step=...)``)


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama-3.1/3.2 rotary frequency scaling (config.json ``rope_scaling`` with rope_type "llama3").

    Wavelengths longer than original_context / low_freq_factor are slowed by ``factor``, those
    shorter than original_context / high_freq_factor are kept, and the band between is blended.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_context: int  # "original_max_position_embeddings"

    def scale(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """Scaled frequencies (same shape); computed in float64, returned as float32."""
        freq = inv_freq.double()
        wavelen = 2 * math.pi / freq
        low_wavelen = self.original_context / self.low_freq_factor  # longer than this: slowed
        high_wavelen = self.original_context / self.high_freq_factor  # shorter than this: kept
        blend = (self.original_context / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        blended = (1 - blend) * freq / self.factor + blend * freq
        scaled = torch.where(wavelen > low_wavelen, freq / self.factor, freq)
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled).float()


class ScaledRotaryEmbedding(RotaryEmbedding):
    """RotaryEmbedding whose frequencies go through a ``Llama3RopeScaling``, also after dtype casts."""

    def __init__(self, head_dim: int, base: float, scaling: Llama3RopeScaling):
        super().__init__(head_dim, base)
        self.scaling = scaling
        self.inv_freq = scaling.scale(self.inv_freq)

    def _frequencies(self, head_dim: int, base: float) -> torch.Tensor:  # type: ignore[override]
        # RotaryEmbedding recomputes frequencies after a cast through this hook; keep them scaled.
        plain = RotaryEmbedding._frequencies(head_dim, base)
        scaling = getattr(self, "scaling", None)  # absent while RotaryEmbedding.__init__ runs
        return plain if scaling is None else scaling.scale(plain)


@dataclass(frozen=True)
class LlmConfig:
    """Shape of a Llama-family decoder. Defaults are SmolLM2-135M-Instruct."""

    vocab_size: int = 49152  # rows of the token embedding and of the LM head
    hidden: int = 576  # model width
    layers: int = 30  # decoder blocks
    heads: int = 9  # query heads
    kv_heads: int = 3  # key/value heads (grouped-query attention)
    head_dim: int = 64  # features per head (hidden // heads for Llama and Qwen2)
    ffn: int = 1536  # SwiGLU inner width
    rope_base: float = 100000.0  # rotary frequency base ("rope_theta")
    rms_eps: float = 1e-5  # RMSNorm epsilon
    rope_scaling: Llama3RopeScaling | None = None  # Llama-3.1/3.2 long-context frequency scaling
    tie_word_embeddings: bool = True  # LM head reuses the token embedding matrix
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2)
    max_context: int = 1024  # most tokens the KV cache holds (its capacity, or its largest one)
    prefill_max_tokens: int = 64  # largest chunk one prefill call takes (the "tokens" dim max)

    def __post_init__(self) -> None:
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads}")
        if not 1 <= self.prefill_max_tokens <= self.max_context:
            raise ValueError(f"prefill_max_tokens={self.prefill_max_tokens} must be in 1..max_context={self.max_context}")

    @property
    def cache_shape(self) -> tuple[int, int, int, int]:  # one layer's k or v cache, batch of one
        return (1, self.kv_heads, self.max_context, self.head_dim)


class SwiGlu(nn.Module):
    """down(silu(gate(x)) * up(x)); names match Hugging Face's LlamaMLP."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    def __init__(self, config: LlmConfig):
        super().__init__()
        shape = AttentionShape(config.hidden, config.heads, config.kv_heads, config.head_dim, config.qkv_bias)
        self.input_layernorm = RmsNorm(config.hidden, config.rms_eps)
        self.self_attn = CachedSelfAttention(shape)
        self.post_attention_layernorm = RmsNorm(config.hidden, config.rms_eps)
        self.mlp = SwiGlu(config.hidden, config.ffn)

    def forward(self, x, cos, sin, positions, mask, k_cache, v_cache):
        # x: (B, T, hidden); caches: (B, KV, C, D)
        attended, k_cache, v_cache = self.self_attn(self.input_layernorm(x), cos, sin, positions, mask, k_cache, v_cache)
        x = x + attended
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k_cache, v_cache


class LlamaBackbone(nn.Module):
    """Embedding, blocks and final norm: Hugging Face's ``model.*`` submodule."""

    def __init__(self, config: LlmConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden)
        self.layers = nn.ModuleList(DecoderBlock(config) for _ in range(config.layers))
        self.norm = RmsNorm(config.hidden, config.rms_eps)


class LlmModel(nn.Module):
    """The weights and the cached forward pass shared by the prefill and decode steps."""

    def __init__(self, config: LlmConfig):
        super().__init__()
        self.config = config
        self.model = LlamaBackbone(config)
        self.rotary = (RotaryEmbedding(config.head_dim, config.rope_base) if config.rope_scaling is None
                       else ScaledRotaryEmbedding(config.head_dim, config.rope_base, config.rope_scaling))
        # Tied checkpoints have no lm_head tensor: the head multiplies by the embedding matrix.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden, config.vocab_size, bias=False)

    def head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def run(
        self, embeds: torch.Tensor, position: torch.Tensor, caches: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """embeds (B, T, hidden) at ``position`` (B,) -> final-normed hidden (B, T, hidden), new caches.

        ``caches`` is (k_0, v_0, k_1, v_1, ...), each (B, kv_heads, C, head_dim).
        """
        t = embeds.shape[1]
        positions = position.view(-1, 1) + torch.arange(t, device=embeds.device)  # (B, T)
        cos, sin = self.rotary(positions)
        mask = visible_keys(positions, caches[0].shape[2])  # (B, 1, T, C)
        x = embeds
        new_caches = []
        for i, block in enumerate(self.model.layers):
            x, k, v = block(x, cos, sin, positions, mask, caches[2 * i], caches[2 * i + 1])
            new_caches += [k, v]
        return self.model.norm(x), new_caches

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.head_weight())

    def empty_cache(self, batch: int = 1, capacity: int | None = None) -> list[torch.Tensor]:
        c = self.config
        dtype = self.model.embed_tokens.weight.dtype
        shape = (batch, c.kv_heads, capacity or c.max_context, c.head_dim)
        return [torch.zeros(shape, dtype=dtype) for _ in range(2 * c.layers)]

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits (B, T, vocab) from an empty cache: the reference for the steps."""
        b, t = input_ids.shape
        caches = self.empty_cache(b, capacity=max(t, 1))
        hidden, _ = self.run(self.model.embed_tokens(input_ids), torch.zeros(b, dtype=torch.long), caches)
        return self.logits(hidden).float()


class LlmStep(StreamingModule):
    """A prefill (``tokens=None``: dynamic 1..prefill_max_tokens) or decode (``tokens=1``) view of an LlmModel.

    ``cache_step`` > 0 makes the caches' capacity the dynamic dim "context" (cache_step..max_context),
    grown by the host ``cache_step`` rows at a time; 0 keeps it fixed at max_context.
    """

    def __init__(self, llm: LlmModel, tokens: int | None = None, inputs: str = "ids", tail_logits: int = 0,
                 cache_step: int = 0):
        super().__init__()
        if inputs not in ("ids", "embeds"):
            raise ValueError(f"inputs must be 'ids' or 'embeds', not {inputs!r}")
        if tail_logits < 0:
            raise ValueError(f"tail_logits must be >= 0, not {tail_logits}")
        if not 0 <= cache_step <= llm.config.max_context:
            raise ValueError(f"cache_step must be in 0..max_context={llm.config.max_context}, not {cache_step}")
        if 0 < cache_step < llm.config.prefill_max_tokens:
            raise ValueError(f"cache_step={cache_step} must hold one prefill chunk ({llm.config.prefill_max_tokens} tokens)")
        self.cache_step = cache_step
        self.llm = llm
        self.tokens = tokens
        self.inputs = inputs
        # > 0: also output the logits of the last ``tail_logits`` positions, so one call can check a
        # drafted continuation (``LlmSession.generate`` verifies prompt-lookup drafts with them).
        self.tail_logits = tail_logits

    @property
    def config(self) -> LlmConfig:
        return self.llm.config

    def state_specs(self) -> tuple[StateSpec, ...]:
        # The caches follow the compute dtype (fp16 halves their traffic); ids, logits and hidden stay
        # int64/float32 at the graph boundary.
        shape, dtype = self.config.cache_shape, self.compute_dtype
        if self.cache_step:
            shape = (*shape[:2], CONTEXT_DIM, *shape[3:])  # (1, kv_heads, "context", head_dim)
        return tuple(StateSpec(f"{kind}_cache_{i}", shape, 0, dtype) for i in range(self.config.layers) for kind in ("k", "v"))

    def input_specs(self) -> tuple[InputSpec, ...]:
        t = self.tokens if self.tokens is not None else "tokens"
        first = (InputSpec("input_ids", ("batch", t), torch.int64) if self.inputs == "ids"
                 else InputSpec("input_embeds", ("batch", t, self.config.hidden), torch.float32))
        return (first, InputSpec("position", ("batch",), torch.int64))

    def output_names(self) -> tuple[str, ...]:
        return ("logits", "hidden", "tail_logits") if self.tail_logits else ("logits", "hidden")

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        ranges = {}
        if self.tokens is None:
            top = self.config.prefill_max_tokens
            ranges["tokens"] = (1, min(16, top), top)
        if self.cache_step:
            ranges[CONTEXT_DIM] = (self.cache_step, self.cache_step, self.config.max_context)
        return ranges

    def step(self, first: torch.Tensor, position: torch.Tensor, *caches: torch.Tensor):  # type: ignore[override]
        # first: input_ids (B, T) int64 or input_embeds (B, T, hidden); position: (B,) int64
        # caches: k_cache_0, v_cache_0, k_cache_1, ... each (B, kv_heads, capacity, head_dim)
        if self.inputs == "ids":
            embeds = self.llm.model.embed_tokens(first)  # (B, T, hidden)
        else:
            embeds = first.to(self.compute_dtype)
        hidden, new_caches = self.llm.run(embeds, position, caches)
        last = hidden[:, -1]  # (B, hidden)
        if not self.tail_logits:
            return (self.llm.logits(last).float(), last.float(), *new_caches)
        tail = self.llm.logits(hidden[:, -self.tail_logits :]).float()  # (B, min(T, tail_logits), vocab)
        return (tail[:, -1], last.float(), tail, *new_caches)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.llm(input_ids)
