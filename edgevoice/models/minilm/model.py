"""The sentence-embedding model of the knowledge memory: token ids of one text -> a unit vector.

    input_ids (B, T) int64, attention_mask (B, T) int64 (1 = token, 0 = padding)
        -> sentence_embedding (B, 384) float32 with L2 norm 1

A BERT encoder at MiniLM-L6 size (6 post-norm layers, width 384, 12 heads, exact GELU), then the
pooling the sentence-transformers configuration of all-MiniLM-L6-v2 names (``1_Pooling``: mean over
the real tokens; ``2_Normalize``: L2 norm), so the cosine similarity of two texts is a dot product
on the host. Every text is one segment: token type 0 everywhere, so only the first row of the
token-type table is used (the table is still loaded, strictly). The pretraining pooler
(``pooler.dense``) is not part of the sentence embedding and is not built.

Stateless: one call embeds whole texts, so the streaming contract's step is the call. Padding is
masked out of attention and out of the mean, so a text embeds the same alone or in a padded batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.streaming import InputSpec, StateSpec, StreamingModule

MASKED_SCORE = -1e4  # added to attention scores of padding keys: exp() underflows to 0, and fp16 holds it


@dataclass(frozen=True)
class MiniLmConfig:
    """Sizes of the encoder; the defaults are all-MiniLM-L6-v2 (its config.json)."""

    vocab_size: int = 30522
    width: int = 384  # hidden size D
    layers: int = 6
    heads: int = 12  # head size D / heads = 32
    ffn: int = 1536  # intermediate size
    max_positions: int = 512  # rows of the position table
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    max_tokens: int = 256  # longest text the graph takes (sentence-transformers' max_seq_length)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} does not split into {self.heads} heads")
        if self.max_tokens > self.max_positions:
            raise ValueError(f"max_tokens {self.max_tokens} exceeds the {self.max_positions} learned positions")

    @classmethod
    def from_bert_config(cls, config: dict, max_tokens: int = 256) -> MiniLmConfig:
        """From a Hugging Face BERT ``config.json``; refuses what this encoder does not implement."""
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only BERT encoders with exact GELU and absolute positions are supported")
        return cls(
            vocab_size=config["vocab_size"], width=config["hidden_size"], layers=config["num_hidden_layers"],
            heads=config["num_attention_heads"], ffn=config["intermediate_size"],
            max_positions=config["max_position_embeddings"], type_vocab_size=config["type_vocab_size"],
            norm_eps=config["layer_norm_eps"], max_tokens=min(max_tokens, config["max_position_embeddings"]),
        )


class Embeddings(nn.Module):
    """Word + position + token-type (0) embeddings, then LayerNorm."""

    def __init__(self, c: MiniLmConfig):
        super().__init__()
        self.words = nn.Embedding(c.vocab_size, c.width)
        self.positions = nn.Embedding(c.max_positions, c.width)
        self.token_types = nn.Embedding(c.type_vocab_size, c.width)
        self.norm = nn.LayerNorm(c.width, eps=c.norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (B, T) -> (B, T, D)
        tokens = input_ids.shape[1]
        positions = self.positions.weight[:tokens]  # (T, D): positions 0..T-1
        return self.norm(self.words(input_ids) + positions + self.token_types.weight[0])


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention over one text; padding keys masked."""

    def __init__(self, c: MiniLmConfig):
        super().__init__()
        self.heads, self.head_size = c.heads, c.width // c.heads
        self.q, self.k, self.v = (nn.Linear(c.width, c.width) for _ in range(3))
        self.out = nn.Linear(c.width, c.width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, D) -> (B, H, T, Dh)
        b, t, _ = x.shape
        return x.reshape(b, t, self.heads, self.head_size).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D); key_bias: (B, 1, 1, T), 0 for tokens and MASKED_SCORE for padding -> (B, T, D)
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + key_bias  # (B, H, T, T)
        mixed = torch.softmax(scores, dim=-1) @ v  # (B, H, T, Dh)
        b, _, t, _ = mixed.shape
        return self.out(mixed.transpose(1, 2).reshape(b, t, -1))


class EncoderLayer(nn.Module):
    """BERT's post-norm layer: x = norm(x + attn(x)); x = norm(x + mlp(x))."""

    def __init__(self, c: MiniLmConfig):
        super().__init__()
        self.attn = SelfAttention(c)
        self.attn_norm = nn.LayerNorm(c.width, eps=c.norm_eps)
        self.fc1 = nn.Linear(c.width, c.ffn)
        self.fc2 = nn.Linear(c.ffn, c.width)
        self.mlp_norm = nn.LayerNorm(c.width, eps=c.norm_eps)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D) -> (B, T, D)
        x = self.attn_norm(x + self.attn(x, key_bias))
        return self.mlp_norm(x + self.fc2(nn.functional.gelu(self.fc1(x))))  # exact (erf) GELU, as BERT


def mean_pool_normalized(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' states, then unit L2 norm (sentence-transformers' Pooling + Normalize)."""
    # states: (B, T, D) float32; attention_mask: (B, T) int64 -> (B, D) float32
    weights = attention_mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    summed = (states * weights).sum(dim=1)  # (B, D)
    mean = summed / weights.sum(dim=1).clamp(min=1e-9)
    return mean / mean.norm(dim=-1, keepdim=True).clamp(min=1e-12)


class MiniLm(StreamingModule):
    """The whole embedding model: what the loader fills, strictly, and the exported step."""

    def __init__(self, config: MiniLmConfig = MiniLmConfig()):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("input_ids", ("batch", "tokens"), torch.int64),
                InputSpec("attention_mask", ("batch", "tokens"), torch.int64))

    def output_names(self) -> tuple[str, ...]:
        return ("sentence_embedding",)

    def state_specs(self) -> tuple[StateSpec, ...]:
        return ()

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        return {"tokens": (1, 32, self.config.max_tokens)}  # a spoken question is ~10-20 tokens

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden states (what BertModel calls last_hidden_state)."""
        # input_ids, attention_mask: (B, T) -> (B, T, D) in the compute dtype
        x = self.embeddings(input_ids)
        padding = (1 - attention_mask.to(x.dtype))[:, None, None, :]  # (B, 1, 1, T): 1 where padding
        key_bias = padding * MASKED_SCORE
        for layer in self.layers:
            x = layer(x, key_bias)
        return x

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        # input_ids, attention_mask: (B, T) int64 -> sentence_embedding (B, D) float32
        states = self.hidden_states(input_ids, attention_mask).to(torch.float32)
        return (mean_pool_normalized(states, attention_mask),)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.step(input_ids, attention_mask)[0]
