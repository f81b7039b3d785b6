"""Export side of Freeze-Omni's listen path: its components, their parity feeds, random-weight builds.

Components (one graph each):

    fo_frontend    audio chunk (B, 2560) -> CMVN'd fbank (B, 19, 80)          carries: samples, frames
    fo_encoder     fbank (B, 19, 80) -> encoder frames (B, 4, d)              state: pe_index, cached, K/V windows
    fo_adapter     encoder frames (B, 4, d) -> LLM embeddings (B, 2, hidden)  state: conv cache
    fo_llm_listen  embeddings (B, T, hidden) -> logits, hidden, state_logits, state_probs   state: LLM KV
    fo_llm_prefill token ids (B, T) -> logits, hidden                         (system prompt, reply prefix)
    fo_llm_decode  one token id (B, 1) -> logits, hidden                      (reply tokens)

The three LLM graphs share one KV cache layout, so the host hands the same state from one to the
next. The turn-state head lives in ``fo_llm_listen`` (see ``edgevoice.models.freeze_omni.state_head`` for
why). The 25 prompt embeddings fed at the start of every user turn are data, not a graph: they
ship as ``fo_prompt_embeddings.npy`` and the host prepends them (after the embedded turn-prefix
ids) to the first audio embeddings of the turn, as the reference does.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgevoice.models.freeze_omni.adapter import FoAdapter, FoAdapterConfig
from edgevoice.models.freeze_omni.encoder import FoEncoder, FoEncoderConfig
from edgevoice.models.freeze_omni.frontend import FbankConfig, FoFrontend
from edgevoice.models.freeze_omni.state_head import ListenLlmStep, StateHead
from edgevoice.models.llm import LlmConfig, LlmModel, LlmStep
from edgevoice.recipes.base import RecipeComponent
from edgevoice.recipes.llm import TOKENIZER_FILE, write_tokenizer
from edgevoice.recipes.silero_vad import voiced_test_signal
from edgevoice.weights.freeze_omni.audiollm import FoListen, FoPrompt

LICENSE = ("Freeze-Omni audiollm weights: Tencent Freeze-Omni license, academic/research/education use only; "
           "Qwen2 LLM: Apache-2.0")
RANDOM_LICENSE = "generated: seeded random weights, no license restrictions"
PROMPT_FILE = "fo_prompt_embeddings.npy"
PARITY_CHUNKS = 6  # 0.96 s of audio streamed through every component by export --verify


@dataclass(frozen=True)
class ListenDims:
    """Every size of a listen path, for building one with random weights."""

    encoder: FoEncoderConfig  # speech encoder shape
    adapter_channels: int  # adapter Conv1d output channels (2 x encoder width in the reference)
    llm: LlmConfig  # Qwen2 shape; its hidden is the adapter output width
    prompt_num: int = 25  # learned prompt embeddings per user turn
    state_classes: int = 4  # turn-state head outputs (the reference has 4, decides on 3)
    fbank: FbankConfig = field(default_factory=FbankConfig)  # front end (new_frames follows the encoder chunk)


def _qwen2(**sizes) -> LlmConfig:
    return LlmConfig(rope_base=1e6, rms_eps=1e-6, tie_word_embeddings=False, qkv_bias=True, **sizes)


# The `tiny` recipe: the test fixtures' widths (encoder d96 x 3, Qwen2 128 x 2).
TINY_LISTEN = ListenDims(
    encoder=FoEncoderConfig(d_model=96, heads=4, layers=3, ffn=384),
    adapter_channels=192,
    llm=_qwen2(vocab_size=1024, hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32, ffn=384, max_context=1024),
)

# Published Freeze-Omni: encoder d1024 x 24 (16 heads), adapter -> 3584, Qwen2-7B-Instruct.
FULL_LISTEN = ListenDims(
    encoder=FoEncoderConfig(),
    adapter_channels=2048,
    llm=_qwen2(vocab_size=152064, hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128, ffn=18944, max_context=2048),
)


def random_listen(dims: ListenDims = TINY_LISTEN, seed: int = 0, device: str | torch.device | None = None) -> FoListen:
    """A listen path of any width with seeded random weights (``device="meta"``: shapes only, no memory)."""
    with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
        torch.manual_seed(seed)
        fbank = FbankConfig(**{**dims.fbank.__dict__, "new_frames": 4 * dims.encoder.chunk_size})
        frontend, encoder = FoFrontend(fbank), FoEncoder(dims.encoder)
        adapter = FoAdapter(FoAdapterConfig(dims.encoder.d_model, dims.adapter_channels, dims.llm.hidden,
                                            chunk_frames=dims.encoder.chunk_size))
        llm, head = LlmModel(dims.llm), StateHead(dims.llm.hidden, dims.state_classes)
        prompt_embeddings = torch.randn(dims.prompt_num, dims.llm.hidden) * 0.02
        if not frontend.cmvn_mean.is_meta:
            _randomize(frontend, encoder, llm)
    vocab = dims.llm.vocab_size  # placeholder ids: random weights come without a tokenizer
    prompt = FoPrompt(eod_id=vocab - 1, turn_prefix_ids=(vocab - 1, 1, 2, 3), response_prefix_ids=(vocab - 1, 4, 5),
                      system_prefix_ids=(6,))
    return FoListen(frontend.eval(), encoder.eval(), adapter.eval(), llm.eval(), head.eval(), prompt_embeddings,
                    prompt, None, f"random weights (seed {seed})")


@torch.no_grad()
def _randomize(frontend: FoFrontend, encoder: FoEncoder, llm: LlmModel) -> None:
    """Values the PyTorch defaults leave degenerate: CMVN stats, position biases, the LLM's tables."""
    frontend.cmvn_mean.copy_(10.0 + torch.randn_like(frontend.cmvn_mean))  # typical log-mel level
    frontend.cmvn_istd.fill_(0.25)
    for block in encoder.blocks:
        torch.nn.init.xavier_uniform_(block.self_attn.pos_bias_u)
        torch.nn.init.xavier_uniform_(block.self_attn.pos_bias_v)
    for param in llm.parameters():
        if param.ndim == 2:  # HF's Qwen2 initializer: N(0, 0.02) for every matrix, embeddings included
            param.normal_(0.0, 0.02)


# --- components --------------------------------------------------------------------------------


def listen_components(listen: FoListen, parity_audio: np.ndarray | None = None,
                      license: str | None = None) -> list[RecipeComponent]:
    """The six listen-path components of ``listen`` with parity feeds from ``parity_audio`` (16 kHz)."""
    license = license or (RANDOM_LICENSE if listen.tokenizer_json is None else LICENSE)
    feeds = ListenParityFeeds(listen, parity_audio)
    fb, enc = listen.frontend.config, listen.encoder.config
    llm_facts = _llm_facts(listen)
    files = _llm_files(listen)
    return [
        RecipeComponent("fo_frontend", listen.frontend, {"sample_rate": fb.sample_rate, "chunk_samples": fb.chunk_samples,
                        "out_frames": fb.out_frames, "mel_bins": fb.mel_bins}, license, feeds.frontend),
        RecipeComponent("fo_encoder", listen.encoder, {"chunk_frames": enc.chunk_size, "window_frames": enc.window,
                        "d_model": enc.d_model, "frame_ms": 40}, license, feeds.encoder),
        RecipeComponent("fo_adapter", listen.adapter, {"out_frames": listen.adapter.config.out_frames,
                        "hidden": listen.adapter.config.out_dim}, license, feeds.adapter),
        RecipeComponent("fo_llm_listen", ListenLlmStep(listen.llm, listen.state_head), llm_facts, license,
                        feeds.llm_listen, files=files),
        RecipeComponent("fo_llm_prefill", LlmStep(listen.llm, tokens=None, inputs="ids"), llm_facts, license, feeds.llm_prefill),
        RecipeComponent("fo_llm_decode", LlmStep(listen.llm, tokens=1, inputs="ids"), llm_facts, license, feeds.llm_decode),
    ]


def _llm_facts(listen: FoListen) -> dict:
    c, p = listen.llm.config, listen.prompt
    facts = {"vocab_size": c.vocab_size, "hidden": c.hidden, "max_context": c.max_context,
             "prefill_max_tokens": c.prefill_max_tokens, "eod_id": p.eod_id, "turn_prefix_ids": list(p.turn_prefix_ids),
             "response_prefix_ids": list(p.response_prefix_ids), "system_prefix_ids": list(p.system_prefix_ids),
             "prompt_embeddings": PROMPT_FILE, "prompt_rows": int(listen.prompt_embeddings.shape[0]),
             "state_classes": int(listen.state_head.linear.out_features), "turn_state_threshold": 0.5}
    if listen.tokenizer_json is not None:
        facts["tokenizer"] = TOKENIZER_FILE
    return facts


def _llm_files(listen: FoListen) -> dict[str, Path]:
    files = {PROMPT_FILE: write_float_table(listen.prompt_embeddings, "prompt")}
    if listen.tokenizer_json is not None:
        files[TOKENIZER_FILE] = write_tokenizer(listen.tokenizer_json)
    return files


def write_float_table(table: torch.Tensor, stem: str) -> Path:
    """``table`` as float32 .npy in a per-user temp folder, named by content (written once).

    The package's export copies it in; naming by content lets repeated exports of the same
    weights share one file.
    """
    array = np.ascontiguousarray(table.detach().float().cpu().numpy())
    folder = Path(tempfile.gettempdir()) / "edgevoice-fo"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{hashlib.sha256(array.tobytes()).hexdigest()[:16]}.npy"
    if not path.is_file():
        partial = path.with_suffix(".partial.npy")
        np.save(partial, array)
        partial.replace(path)  # atomic: a reader or a concurrent export never sees half a file
    return path


class ListenParityFeeds:
    """Step inputs for export --verify, each stage fed by our torch run of the stage before it."""

    def __init__(self, listen: FoListen, audio: np.ndarray | None):
        self.listen = listen
        chunk = listen.frontend.config.chunk_samples
        if audio is None:
            audio = voiced_test_signal(PARITY_CHUNKS * chunk / listen.frontend.config.sample_rate)
        usable = len(audio) // chunk * chunk
        self.chunks = np.asarray(audio[:usable], dtype=np.float32).reshape(-1, 1, chunk)

    def _run(self, module, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        streamer = module.streamer()
        outs = []
        for feed in feeds:
            result = streamer(*(torch.from_numpy(v) for v in feed.values()))
            outs.append((result[0] if isinstance(result, tuple) else result).numpy())
        return outs

    def frontend(self) -> list[dict[str, np.ndarray]]:
        return [{"chunk": c} for c in self.chunks]

    def encoder(self) -> list[dict[str, np.ndarray]]:
        return [{"feats": f} for f in self._run(self.listen.frontend, self.frontend())]

    def adapter(self) -> list[dict[str, np.ndarray]]:
        return [{"encoded": e} for e in self._run(self.listen.encoder, self.encoder())]

    def llm_listen(self) -> list[dict[str, np.ndarray]]:
        audio = self._run(self.listen.adapter, self.adapter())
        first = turn_start_embeds(self.listen, torch.from_numpy(audio[0])).numpy()
        rows = [first] + audio[1:]
        positions = np.cumsum([0] + [r.shape[1] for r in rows[:-1]])
        return [{"input_embeds": r, "position": np.array([p], dtype=np.int64)} for r, p in zip(rows, positions)]

    def llm_prefill(self) -> list[dict[str, np.ndarray]]:
        ids = np.asarray(self.listen.prompt.system_prefix_ids + self.listen.prompt.turn_prefix_ids, dtype=np.int64)[None]
        cut = ids.shape[1] // 2
        return [{"input_ids": ids[:, :cut], "position": np.array([0], dtype=np.int64)},
                {"input_ids": ids[:, cut:], "position": np.array([cut], dtype=np.int64)}]

    def llm_decode(self) -> list[dict[str, np.ndarray]]:
        ids = self.listen.prompt.response_prefix_ids
        return [{"input_ids": np.array([[t]], dtype=np.int64), "position": np.array([i], dtype=np.int64)} for i, t in enumerate(ids)]


@torch.no_grad()
def turn_start_embeds(listen: FoListen, audio_embeds: torch.Tensor) -> torch.Tensor:
    """LLM input of a turn's first chunk: embed(turn prefix ids) + prompt embeddings + audio (B, 2, hidden)."""
    ids = torch.tensor([listen.prompt.turn_prefix_ids], dtype=torch.long)
    prefix = listen.llm.model.embed_tokens(ids).float()  # (1, P, hidden)
    b = audio_embeds.shape[0]
    prompt = listen.prompt_embeddings.float().unsqueeze(0)
    return torch.cat([prefix.expand(b, -1, -1), prompt.expand(b, -1, -1), audio_embeds.float()], dim=1)

