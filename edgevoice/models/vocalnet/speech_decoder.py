"""VocalNet's speech decoder with multi-token prediction (``SpeechGeneratorARMTP``) as two exportable steps.

The decoder turns the LLM's last hidden states (width ``D`` = the LLM width) into speech units.
Three kinds of Llama blocks (rope base 1e4, RMSNorm eps 1e-6, plain multi-head attention):

    pre-NN (encode_layers)     causal over the LLM rows, its own cache (text rows arrive in chunks)
    decoder (decode_layers)    causal over [emb(BOS), pre-NN rows], then the fed speech units;
                               ``norm`` -> ``output_proj`` gives the main head's logits
    MTP layer j (mtp_layers)   one block each; layer 0 reads the decoder's hidden output, layer j
                               reads layer j-1's (never token embeddings); ``norm_final`` ->
                               ``output_proj`` gives head j+1's logits

Caches. The reference keeps a "text" cache (BOS + pre-NN rows) and rebuilds a "speech" cache as
text ⊕ the previously fed units before every streaming call; new units then attend to every row
of that cache. Attention does not care where a key sits, only which keys are visible and the
rotary position baked into each key, so each block here keeps one fixed tensor with two regions:

    rows [0, text_rows)                        text rows, position = row
    rows [text_rows, text_rows + speech_rows)  fed units, at the rotary position the reference
                                               gave them (its speech-cache length at the time)
    row  text_rows + speech_rows               scratch row for a BOS row that is not wanted

Positions are inputs, so the host (``edgevoice.runtime.vocalnet.speech_tokens``) reproduces the
reference's bookkeeping: ``text_len`` rows of the text region are valid (all modules share it),
``speech_len[m]`` rows of module m's speech region (0 = decoder, j + 1 = MTP layer j); a unit fed
at speech row s gets rotary position text_len + s. The two steps share one state set:

    speech_text:  step(rows (B, R, D), prenn_len (B,), text_len (B,), *state) -> (*state')
                  pre-NN at positions prenn_len.., then [BOS if text_len == 0] ⊕ pre-NN rows
                  through the decoder and through every used MTP layer (each on the decoder's
                  output) into the text region; the host adds R to prenn_len, R (+1) to text_len
    speech_units: step(tokens (B, K), text_len (B,), speech_len (B, N), *state) -> (logits (B, N, V), *state')
                  K fed units through the decoder, then the N-1 MTP layers in sequence; the
                  logits of each module at the last fed position; N = 1 + mtp heads used

Every module writes its K rows each call. A module the host decides not to run (the reference
stops mid-cycle at EOS or at a chunk's unit budget) is simply not advanced: its rows past
``speech_len[m]`` are masked and overwritten next time. Sampling, the repetition penalty and
stopping stay on the host.
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
class MtpDecoderConfig:
    """Shape of the speech decoder. Defaults are VocalNet-1B's (``ar_config_5``)."""

    width: int = 2048  # llm_hidden_size: the decoder reads the LLM's hidden states directly
    heads: int = 32  # decoder_num_heads; keys/values have as many (plain multi-head attention)
    ffn: int = 8192  # decoder_ffn_dim: SwiGLU inner width
    pre_nn_layers: int = 2  # encoder_num_layers
    decoder_layers: int = 4  # decoder_num_layers
    mtp_layers: int = 5  # mtp_num: MTP layers in the checkpoint
    mtp_used: int = 2  # infer_mtp_token_num: MTP layers run per step (the reference's inference default)
    unit_vocab: int = 6561  # unit_vocab_size; BOS/SOS/EOS/PAD follow as special tokens
    special_tokens: int = 4
    bos_id: int = 6561  # speech_bos_token_id: its embedding starts the text rows
    sos_id: int = 6562  # speech_sos_token_id: the first unit fed
    eos_id: int = 6563  # speech_eos_token_id: ends generation
    pad_id: int = 6564  # speech_padding_token_id
    rope_base: float = 10000.0  # LlamaConfig default in the reference
    rms_eps: float = 1e-6  # LlamaConfig default in the reference
    max_text_rows: int = 520  # text region: BOS + LLM rows (512 reply tokens + the <|eot_id|> row)
    max_speech_rows: int = 2048  # speech region per module: fed units (the reference's max_tokens)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not a multiple of heads={self.heads}")
        if not 0 <= self.mtp_used <= self.mtp_layers:
            raise ValueError(f"mtp_used={self.mtp_used} must be in 0..mtp_layers={self.mtp_layers}")
        if self.max_text_rows < 2 or self.max_speech_rows < 1:
            raise ValueError("the text region needs at least 2 rows (BOS + one) and the speech region 1")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def vocab_size(self) -> int:  # rows of the embedding and of every output_proj
        return self.unit_vocab + self.special_tokens

    @property
    def heads_per_step(self) -> int:  # N: logits rows one unit step returns
        return 1 + self.mtp_used

    @property
    def scratch_row(self) -> int:  # where an unwanted BOS row goes: never visible to a real row
        return self.max_text_rows + self.max_speech_rows

    @property
    def cache_rows(self) -> int:
        return self.scratch_row + 1

    def block_config(self) -> LlmConfig:
        """The Llama block shape of all three stacks (vocab and context unused here)."""
        return LlmConfig(
            vocab_size=self.vocab_size, hidden=self.width, layers=self.decoder_layers, heads=self.heads,
            kv_heads=self.heads, head_dim=self.head_dim, ffn=self.ffn, rope_base=self.rope_base,
            rms_eps=self.rms_eps, tie_word_embeddings=False, qkv_bias=False,
            max_context=self.cache_rows, prefill_max_tokens=self.cache_rows,
        )


class MtpLayer(nn.Module):
    """One MTP module; names as in the checkpoint (``mtp_layers.{j}.*``; its rotary has no weights)."""

    def __init__(self, config: MtpDecoderConfig):
        super().__init__()
        self.decoder_layer = DecoderBlock(config.block_config())
        self.norm_final = RmsNorm(config.width, config.rms_eps)
        self.output_proj = nn.Linear(config.width, config.vocab_size)


def _offsets(start: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) int64: start[b] + 0 .. count-1."""
    return start.view(-1, 1) + torch.arange(count, device=start.device)


def _run_blocks(blocks, x, cos, sin, rows, mask, caches):
    """x (B, T, D) through ``blocks``; caches (k_0, v_0, k_1, ...) -> (x, new caches)."""
    new_caches = []
    for i, block in enumerate(blocks):
        x, k, v = block(x, cos, sin, rows, mask, caches[2 * i], caches[2 * i + 1])
        new_caches += [k, v]
    return x, new_caches


class MtpSpeechDecoder(nn.Module):
    """The weights (names as ``speech_generator.*`` in the checkpoint) and the passes both steps export."""

    def __init__(self, config: MtpDecoderConfig = MtpDecoderConfig()):
        super().__init__()
        self.config = config
        blocks = config.block_config()
        self.embedding = nn.Embedding(config.vocab_size, config.width)
        self.encode_layers = nn.ModuleList(DecoderBlock(blocks) for _ in range(config.pre_nn_layers))
        self.decode_layers = nn.ModuleList(DecoderBlock(blocks) for _ in range(config.decoder_layers))
        self.norm = RmsNorm(config.width, config.rms_eps)
        self.output_proj = nn.Linear(config.width, config.vocab_size)
        self.mtp_layers = nn.ModuleList(MtpLayer(config) for _ in range(config.mtp_layers))
        # The reference has one rotary module per stack, all with the same base: one serves all.
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_base)

    # --- state ----------------------------------------------------------------------------------

    def state_specs(self, dtype: torch.dtype = torch.float32) -> tuple[StateSpec, ...]:
        c = self.config
        pre = (1, c.heads, c.max_text_rows, c.head_dim)
        main = (1, c.heads, c.cache_rows, c.head_dim)
        specs = [StateSpec(f"prenn_{kind}_{i}", pre, 0, dtype) for i in range(c.pre_nn_layers) for kind in ("k", "v")]
        specs += [StateSpec(f"{kind}_cache_{i}", main, 0, dtype) for i in range(c.decoder_layers) for kind in ("k", "v")]
        specs += [StateSpec(f"mtp{j}_{kind}", main, 0, dtype) for j in range(c.mtp_used) for kind in ("k", "v")]
        return tuple(specs)

    def split_state(self, state):
        """(pre-NN caches, decoder caches, [MTP layer j's (k, v)]) from the flat state tuple."""
        c = self.config
        p, d = 2 * c.pre_nn_layers, 2 * c.decoder_layers
        mtp = [state[p + d + 2 * j: p + d + 2 * j + 2] for j in range(c.mtp_used)]
        return state[:p], state[p:p + d], mtp

    def empty_state(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return tuple(spec.zeros(batch) for spec in self.state_specs(self.embedding.weight.dtype))

    # --- text rows ------------------------------------------------------------------------------

    def pre_nn(self, rows: torch.Tensor, prenn_len: torch.Tensor, caches) -> tuple[torch.Tensor, list]:
        """encode_layers, causal, at positions prenn_len..: rows (B, R, D) -> (B, R, D) (no norm), caches."""
        positions = _offsets(prenn_len, rows.shape[1])  # (B, R)
        cos, sin = self.rotary(positions)
        keys = torch.arange(caches[0].shape[2], device=rows.device)
        mask = (keys.view(1, 1, 1, -1) <= positions.unsqueeze(1).unsqueeze(-1))  # (B, 1, R, C)
        return _run_blocks(self.encode_layers, rows, cos, sin, positions, mask, caches)

    def text_rows(self, pre: torch.Tensor, text_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[emb(BOS), pre] (B, R+1, D) and their text-region rows (B, R+1).

        BOS belongs to the first call only (text_len == 0); later calls send it to the scratch row,
        which keeps the graph's shapes independent of the data.
        """
        b = pre.shape[0]
        bos = torch.full((b, 1), self.config.bos_id, dtype=torch.long, device=pre.device)
        x = torch.cat([self.embedding(bos).to(pre.dtype), pre], dim=1)
        first = (text_len == 0).long()  # (B,)
        rows = _offsets(text_len - 1 + first, x.shape[1])  # row i>=1 lands at text_len + i - 1 + first
        scratch = torch.full_like(rows[:, :1], self.config.scratch_row)
        rows = torch.cat([torch.where(first.view(-1, 1) == 1, rows[:, :1], scratch), rows[:, 1:]], dim=1)
        return x, rows

    def _text_mask(self, rows: torch.Tensor, capacity: int) -> torch.Tensor:
        """(B, 1, T, C): a text row sees the text rows up to itself (the scratch row sees itself too)."""
        keys = torch.arange(capacity, device=rows.device).view(1, 1, -1)
        limit = rows.unsqueeze(-1)  # (B, T, 1)
        seen = ((keys <= limit) & (keys < self.config.max_text_rows)) | (keys == limit)
        return seen.unsqueeze(1)

    def text_pass(self, rows, prenn_len, text_len, state):
        """The speech_text step: returns (pre-NN output (B, R, D), decoder output (B, R+1, D), new state)."""
        pre_caches, dec_caches, mtp_caches = self.split_state(state)
        pre, new_pre = self.pre_nn(rows, prenn_len, pre_caches)
        x, text_rows = self.text_rows(pre, text_len)
        cos, sin = self.rotary(text_rows)
        mask = self._text_mask(text_rows, dec_caches[0].shape[2])
        decoded, new_dec = _run_blocks(self.decode_layers, x, cos, sin, text_rows, mask, dec_caches)
        new_mtp = []
        for j, caches in enumerate(mtp_caches):  # every MTP layer reads the decoder's output here
            _, k, v = self.mtp_layers[j].decoder_layer(decoded, cos, sin, text_rows, mask, *caches)
            new_mtp += [k, v]
        return pre, decoded, (*new_pre, *new_dec, *new_mtp)

    # --- fed units ------------------------------------------------------------------------------

    def _unit_rows(self, text_len, speech_len, count: int, capacity: int):
        """cos/sin, cache rows (B, K) and mask (B, 1, K, C) of K units fed after speech_len (B,)."""
        c = self.config
        rows = _offsets(speech_len, count) + c.max_text_rows  # (B, K)
        cos, sin = self.rotary(rows - c.max_text_rows + text_len.view(-1, 1))
        keys = torch.arange(capacity, device=rows.device).view(1, 1, -1)
        text = keys < text_len.view(-1, 1, 1)  # (B, 1, C)
        speech = (keys >= c.max_text_rows) & (keys <= rows.unsqueeze(-1))  # (B, K, C)
        return cos, sin, rows, (text | speech).unsqueeze(1)

    def unit_pass(self, tokens, text_len, speech_len, state):
        """The speech_units step: returns (logits (B, N, V) float32, hidden of each module, new state)."""
        pre_caches, dec_caches, mtp_caches = self.split_state(state)
        capacity, count = dec_caches[0].shape[2], tokens.shape[1]
        cos, sin, rows, mask = self._unit_rows(text_len, speech_len[:, 0], count, capacity)
        hidden, new_dec = _run_blocks(self.decode_layers, self.embedding(tokens), cos, sin, rows, mask, dec_caches)
        logits, hiddens, new_mtp = [self.output_proj(self.norm(hidden[:, -1]))], [hidden], []
        for j, caches in enumerate(mtp_caches):  # layer j reads layer j-1's hidden states (j=0: the decoder's)
            layer = self.mtp_layers[j]
            cos, sin, rows, mask = self._unit_rows(text_len, speech_len[:, j + 1], count, capacity)
            hidden, k, v = layer.decoder_layer(hidden, cos, sin, rows, mask, *caches)
            logits.append(layer.output_proj(layer.norm_final(hidden[:, -1])))
            hiddens.append(hidden)
            new_mtp += [k, v]
        return torch.stack(logits, dim=1).float(), hiddens, (*pre_caches, *new_dec, *new_mtp)


class _DecoderStep(StreamingModule):
    """Common part of the two views: the shared state layout and the compute dtype."""

    def __init__(self, decoder: MtpSpeechDecoder):
        super().__init__()
        self.decoder = decoder

    @property
    def config(self) -> MtpDecoderConfig:
        return self.decoder.config

    def state_specs(self) -> tuple[StateSpec, ...]:
        # Caches follow the compute dtype (fp16 halves their traffic); positions are inputs.
        return self.decoder.state_specs(self.compute_dtype)

    def output_names(self) -> tuple[str, ...]:
        return ()


class SpeechTextStep(_DecoderStep):
    """``speech_text``: a chunk of LLM hidden rows into the pre-NN and text regions of every module."""

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (
            InputSpec("rows", ("batch", "rows", self.config.width)),
            InputSpec("prenn_len", ("batch",), torch.int64),
            InputSpec("text_len", ("batch",), torch.int64),
        )

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        top = self.config.max_text_rows - 1  # the BOS row takes one
        return {"rows": (1, min(5, top), top)}

    def step(self, rows, prenn_len, text_len, *state):  # type: ignore[override]
        # rows: (B, R, D); prenn_len, text_len: (B,) int64 valid rows before this call
        _, _, new_state = self.decoder.text_pass(rows.to(self.compute_dtype), prenn_len, text_len, state)
        return new_state


class SpeechUnitStep(_DecoderStep):
    """``speech_units``: feed K units, get the logits of the decoder and of each used MTP head."""

    def input_specs(self) -> tuple[InputSpec, ...]:
        fed = "tokens" if self.config.heads_per_step > 1 else 1  # without MTP heads one unit is fed at a time
        return (
            InputSpec("tokens", ("batch", fed), torch.int64),
            InputSpec("text_len", ("batch",), torch.int64),
            InputSpec("speech_len", ("batch", self.config.heads_per_step), torch.int64),
        )

    def output_names(self) -> tuple[str, ...]:
        return ("logits",)

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        n = self.config.heads_per_step  # the first cycle feeds SOS alone, later ones N units
        return {"tokens": (1, n, n)} if n > 1 else {}

    def step(self, tokens, text_len, speech_len, *state):  # type: ignore[override]
        # tokens: (B, K) int64; speech_len: (B, N) int64 -> logits (B, N, V) float32
        logits, _, new_state = self.decoder.unit_pass(tokens, text_len, speech_len, state)
        return (logits, *new_state)


def speech_decoder_steps(decoder: MtpSpeechDecoder) -> dict[str, _DecoderStep]:
    """The exported views by component name; they share one state set."""
    return {"speech_text": SpeechTextStep(decoder), "speech_units": SpeechUnitStep(decoder)}
