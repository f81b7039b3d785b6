"""Freeze-Omni's speech-token decoder (``LLM2TTSCodecAR``) as three exportable steps.

The decoder turns one spoken segment into codec tokens. Its inputs are rows of width ``D``: the
LLM's hidden states of the segment (the *prefix*) and the embeddings of the segment's text, each
LLM vector reshaped into several rows by the caller. Three stacks of Llama blocks share one
key/value cache per AR layer index:

    prefix decoder (NAR)  layers_prefix  bidirectional over the prefix rows at positions 0..P-1;
                                         only its keys/values matter: they fill the prefix region
    text decoder (NAR)    layers_pre_nn  bidirectional over the text rows, no cache
    AR decoder            layers         first [emb(BOS), text decoder output] bidirectionally at
                                         positions 0..N, then one codec token per step (SOS first),
                                         each attending to the prefix region and the rows before it

Positions of the AR rows restart at 0 after the prefix (the reference subtracts the prefix length
from its cache length), so the prefix and the AR rows overlap in rotary position while sitting in
different cache rows. Attention in the reference has no mask at all (eager attention, mask None):
the first AR pass is bidirectional, and a single-token step sees everything written before it.

Each AR layer's cache is one tensor (B, heads, prefix_capacity + main_capacity, head_dim): rows
[0, prefix_capacity) hold the prefix, the rest the AR rows. Two int64 states say what is valid:
``prefix_len`` (B,) rows of the prefix region and ``position`` (B,) the next AR row. The three
graphs share this state set, so the host feeds the state of one into the next:

    speech_prefix: step(prefix (B, P, D), *state) -> (*state')            prefix_len = P, position = 0
    speech_text:   step(text (B, N, D), *state)   -> (*state')            position += N + 1
    speech_token:  step(token (B, 1), *state)     -> (logits (B, V), *state')   position += 1

A new segment starts from zero state (or any state: ``speech_prefix`` resets both counters and
the masks hide stale rows). Without a prefix, skip ``speech_prefix``: zero state means no prefix.
Sampling (top-k, repetition penalty, stop at EOS) stays on the host: ``edgevoice.runtime.freeze_omni.speech_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.models.llm import DecoderBlock, LlmConfig
from edgevoice.modules.norm import RmsNorm
from edgevoice.modules.rope import RotaryEmbedding
from edgevoice.streaming import InputSpec, StateSpec, StreamingModule


@dataclass(frozen=True)
class FoSpeechDecoderConfig:
    """Shape of the speech decoder. Defaults are the published Freeze-Omni decoder."""

    width: int = 896  # row width of every stack (LLM hidden / rows per LLM vector)
    heads: int = 14  # attention heads (keys/values have as many: plain multi-head attention)
    ffn: int = 4864  # SwiGLU inner width
    prefix_layers: int = 4  # NAR prefix decoder blocks; 0 for a decoder trained without a prefix
    pre_nn_layers: int = 2  # NAR text decoder blocks
    ar_layers: int = 4  # AR decoder blocks
    odim: int = 1024  # codec vocabulary; BOS/SOS/EOS/PAD are odim + 0..3
    rope_base: float = 10000.0  # rotary base of all three stacks (Llama default in the reference)
    rms_eps: float = 1e-6  # RMSNorm epsilon (Llama default in the reference)
    max_prefix_rows: int = 512  # prefix region capacity: 128 LLM states of 4 rows
    max_text_rows: int = 512  # largest text input of one segment
    max_speech_tokens: int = 1000  # AR steps per segment (the reference's max_tokens)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not a multiple of heads={self.heads}")
        if self.prefix_layers not in (0, self.ar_layers):
            # The prefix block i writes the cache slot AR block i reads: the counts must agree.
            raise ValueError(f"prefix_layers={self.prefix_layers} must be 0 or ar_layers={self.ar_layers}")
        if min(self.max_prefix_rows, self.max_text_rows, self.max_speech_tokens) < 1:
            raise ValueError("cache capacities must be at least 1")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def vocab_size(self) -> int:  # rows of the embedding and of out_fnn
        return self.odim + 4

    @property
    def bos_id(self) -> int:  # starts the text rows of the first AR pass
        return self.odim

    @property
    def sos_id(self) -> int:  # the first token fed to the AR steps
        return self.odim + 1

    @property
    def eos_id(self) -> int:  # generation stops when it is chosen
        return self.odim + 2

    @property
    def pad_id(self) -> int:  # padding in training; never generated on purpose
        return self.odim + 3

    @property
    def main_capacity(self) -> int:  # AR rows: BOS + text + one row per fed token
        return 1 + self.max_text_rows + self.max_speech_tokens

    @property
    def cache_rows(self) -> int:
        return self.max_prefix_rows + self.main_capacity

    def block_config(self) -> LlmConfig:
        """The Llama block shape shared by the three stacks (vocab and context unused here)."""
        return LlmConfig(
            vocab_size=self.vocab_size, hidden=self.width, layers=self.ar_layers, heads=self.heads,
            kv_heads=self.heads, head_dim=self.head_dim, ffn=self.ffn, rope_base=self.rope_base,
            rms_eps=self.rms_eps, tie_word_embeddings=False, qkv_bias=False,
            max_context=self.cache_rows, prefill_max_tokens=self.cache_rows,
        )


def _offsets(start: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) int64: start[b] + 0 .. count-1."""
    return start.view(-1, 1) + torch.arange(count, device=start.device)


class FoSpeechDecoder(nn.Module):
    """The weights (names as in ``decoder/final.pt``) and the passes the three steps export."""

    def __init__(self, config: FoSpeechDecoderConfig = FoSpeechDecoderConfig()):
        super().__init__()
        self.config = config
        blocks = config.block_config()
        self.embedding = nn.Embedding(config.vocab_size, config.width)
        self.layers_prefix = nn.ModuleList(DecoderBlock(blocks) for _ in range(config.prefix_layers))
        self.layers_pre_nn = nn.ModuleList(DecoderBlock(blocks) for _ in range(config.pre_nn_layers))
        self.layers = nn.ModuleList(DecoderBlock(blocks) for _ in range(config.ar_layers))
        self.norm = RmsNorm(config.width, config.rms_eps)
        self.out_fnn = nn.Linear(config.width, config.vocab_size)
        # The reference has one rotary module per stack, all with the same base: one serves all.
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_base)

    def state_specs(self, dtype: torch.dtype = torch.float32) -> tuple[StateSpec, ...]:
        c = self.config
        shape = (1, c.heads, c.cache_rows, c.head_dim)
        caches = tuple(StateSpec(f"{kind}_cache_{i}", shape, 0, dtype) for i in range(c.ar_layers) for kind in ("k", "v"))
        counters = (StateSpec("prefix_len", (1,), 0, torch.int64), StateSpec("position", (1,), 0, torch.int64))
        return caches + counters

    def prefix_pass(self, prefix: torch.Tensor, caches: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Write the prefix decoder's keys/values into rows 0..P-1; prefix (B, P, D) -> new caches."""
        b, p, _ = prefix.shape
        rows = _offsets(prefix.new_zeros(b, dtype=torch.long), p)  # (B, P): rows = positions here
        cos, sin = self.rotary(rows)
        keys = torch.arange(caches[0].shape[2], device=prefix.device)
        mask = (keys < p).view(1, 1, 1, -1).expand(b, 1, p, keys.shape[0])  # (B, 1, P, C)
        x, new_caches = prefix, []
        for i, block in enumerate(self.layers_prefix):
            x, k, v = block(x, cos, sin, rows, mask, caches[2 * i], caches[2 * i + 1])
            new_caches += [k, v]
        return new_caches

    def text_pass(self, text: torch.Tensor) -> torch.Tensor:
        """The NAR text decoder, bidirectional over its input: (B, N, D) -> (B, N, D)."""
        b, n, d = text.shape
        rows = _offsets(text.new_zeros(b, dtype=torch.long), n)  # (B, N)
        cos, sin = self.rotary(rows)
        mask = torch.ones(b, 1, n, n, dtype=torch.bool, device=text.device)
        # Each block gets a scratch cache of exactly N rows, overwritten whole: no state survives.
        scratch = text.new_zeros(b, self.config.heads, n, self.config.head_dim)
        x = text
        for block in self.layers_pre_nn:
            x, _, _ = block(x, cos, sin, rows, mask, scratch, scratch)
        return x

    def ar_pass(
        self,
        embeds: torch.Tensor,
        position: torch.Tensor,
        prefix_len: torch.Tensor,
        caches: tuple[torch.Tensor, ...],
        causal: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """AR blocks over embeds (B, T, D) at AR positions position..position+T-1 -> (normed (B, T, D), caches).

        ``causal=False`` lets the T rows see each other (the reference's first pass); ``True``
        makes row t see only rows up to itself, which equals T single-token steps.
        """
        b, t, _ = embeds.shape
        positions = _offsets(position, t)  # (B, T) rotary positions, restarting after the prefix
        rows = positions + self.config.max_prefix_rows  # (B, T) cache rows of the main region
        cos, sin = self.rotary(positions)
        mask = self._ar_mask(positions, position + t - 1, prefix_len, caches[0].shape[2], causal)
        x, new_caches = embeds, []
        for i, block in enumerate(self.layers):
            x, k, v = block(x, cos, sin, rows, mask, caches[2 * i], caches[2 * i + 1])
            new_caches += [k, v]
        return self.norm(x), new_caches

    def _ar_mask(self, positions, last, prefix_len, capacity: int, causal: bool) -> torch.Tensor:
        """(B, 1, T, C): the valid prefix rows plus the AR rows up to each query's limit."""
        keys = torch.arange(capacity, device=positions.device)  # (C,)
        start = self.config.max_prefix_rows
        in_prefix = keys.view(1, 1, -1) < prefix_len.view(-1, 1, 1)  # (B, 1, C)
        limit = positions if causal else last.view(-1, 1).expand_as(positions)  # (B, T)
        in_main = (keys >= start).view(1, 1, -1) & ((keys - start).view(1, 1, -1) <= limit.unsqueeze(-1))  # (B, T, C)
        return (in_prefix | in_main).unsqueeze(1)

    def logits(self, normed: torch.Tensor) -> torch.Tensor:
        return self.out_fnn(normed).float()

    def text_embeds(self, text: torch.Tensor) -> torch.Tensor:
        """[emb(BOS), text decoder(text)]: (B, N, D) -> (B, N + 1, D), the first AR pass input."""
        bos = torch.full((text.shape[0], 1), self.config.bos_id, dtype=torch.long, device=text.device)
        return torch.cat([self.embedding(bos), self.text_pass(text)], dim=1)

    def empty_state(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return tuple(spec.zeros(batch) for spec in self.state_specs(self.embedding.weight.dtype))

    @torch.no_grad()
    def forward(self, prefix: torch.Tensor | None, text: torch.Tensor, fed_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for fed_tokens (B, T) (SOS first), all in one causal pass.

        The reference for the token steps: it must equal feeding the tokens one by one.
        """
        state = self.empty_state(text.shape[0])
        caches, prefix_len = state[:-2], state[-2]
        if prefix is not None:
            caches = tuple(self.prefix_pass(prefix, caches))
            prefix_len = torch.full_like(prefix_len, prefix.shape[1])
        first = self.text_embeds(text)
        _, caches = self.ar_pass(first, torch.zeros_like(prefix_len), prefix_len, tuple(caches), causal=False)
        position = torch.full_like(prefix_len, first.shape[1])
        normed, _ = self.ar_pass(self.embedding(fed_tokens), position, prefix_len, tuple(caches), causal=True)
        return self.logits(normed)


class _DecoderStep(StreamingModule):
    """Common part of the three views: the shared state layout and the compute dtype."""

    def __init__(self, decoder: FoSpeechDecoder):
        super().__init__()
        self.decoder = decoder

    @property
    def config(self) -> FoSpeechDecoderConfig:
        return self.decoder.config

    def state_specs(self) -> tuple[StateSpec, ...]:
        # Caches follow the compute dtype (fp16 halves their traffic); the counters stay int64.
        return self.decoder.state_specs(self.compute_dtype)

    def output_names(self) -> tuple[str, ...]:
        return ()


class SpeechPrefixStep(_DecoderStep):
    """``speech_prefix``: the LLM hidden-state rows of a segment into the prefix region."""

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("prefix", ("batch", "prefix_rows", self.config.width)),)

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        top = self.config.max_prefix_rows
        return {"prefix_rows": (1, min(64, top), top)}

    def step(self, prefix: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        # prefix: (B, P, D); state: k_cache_0, v_cache_0, ..., prefix_len (B,), position (B,)
        caches, prefix_len, position = state[:-2], state[-2], state[-1]
        new_caches = self.decoder.prefix_pass(prefix.to(self.compute_dtype), caches)
        new_len = torch.full_like(prefix_len, prefix.shape[1])
        return (*new_caches, new_len, torch.zeros_like(position))


class SpeechTextStep(_DecoderStep):
    """``speech_text``: the text decoder, then the first (bidirectional) AR pass over [BOS, text]."""

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("text", ("batch", "text_rows", self.config.width)),)

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        top = self.config.max_text_rows
        return {"text_rows": (1, min(64, top), top)}

    def step(self, text: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        # text: (B, N, D); writes AR rows position..position+N
        caches, prefix_len, position = state[:-2], state[-2], state[-1]
        first = self.decoder.text_embeds(text.to(self.compute_dtype))  # (B, N + 1, D)
        _, new_caches = self.decoder.ar_pass(first, position, prefix_len, caches, causal=False)
        return (*new_caches, prefix_len.clone(), position + first.shape[1])


class SpeechTokenStep(_DecoderStep):
    """``speech_token``: feed one codec token (SOS first), get the logits of the next one."""

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("token", ("batch", 1), torch.int64),)

    def output_names(self) -> tuple[str, ...]:
        return ("logits",)

    def step(self, token: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        # token: (B, 1) int64 -> logits (B, V) float32
        caches, prefix_len, position = state[:-2], state[-2], state[-1]
        normed, new_caches = self.decoder.ar_pass(self.decoder.embedding(token), position, prefix_len, caches, causal=True)
        return (self.decoder.logits(normed[:, -1]), *new_caches, prefix_len.clone(), position + 1)


def speech_decoder_steps(decoder: FoSpeechDecoder) -> dict[str, _DecoderStep]:
    """The exported views by component name; ``speech_prefix`` only when the decoder has a prefix stack."""
    steps: dict[str, _DecoderStep] = {}
    if decoder.config.prefix_layers:
        steps["speech_prefix"] = SpeechPrefixStep(decoder)
    steps["speech_text"] = SpeechTextStep(decoder)
    steps["speech_token"] = SpeechTokenStep(decoder)
    return steps
