"""The `vocalnet` recipe: VocalNet + CosyVoice2's vocoder side as one engine package.

``recipe(weights=VOCALNET_DIR, cosyvoice=COSYVOICE_DIR, whisper=None)`` reads the published folders
strictly (``edgevoice.weights.vocalnet``: every tensor placed once, ``weights_only`` loads); every
size comes from their configs and tensor shapes. The `vocalnet-tiny` recipe
(``edgevoice.recipes.vocalnet.tiny``) is the same graph set at toy width with seeded weights.

Graphs, in the order the host drives them:

    vn_listen     30 s of 16 kHz PCM -> log-mel -> Whisper encoder -> projector rows   (stateless)
    vn_llm        embedding rows (B, T, hidden) + position -> logits, hidden (last row)  state: KV cache
    speech_text   LLM hidden rows -> pre-NN + text regions of the decoder caches        } one state set
    speech_units  K fed units -> logits of the main head and each used MTP head        }
    flow_encoder  prompt + reply tokens, speaker embedding -> mu, spks                  (stateless)
    flow_step     one CFG Euler step (the host runs n_timesteps of them)                (stateless)
    hift_source   mel -> F0, harmonic excitation (host-drawn phases and noise)          (stateless)
    hift_decode   mel, excitation -> 24 kHz audio                                       (stateless)

Token ids never enter a graph: the host gathers rows of ``vn_embed_tokens.npy`` (the LLM's tied
table, float32) for the prompt and every reply token, and feeds them to ``vn_llm``.

Manifest ``config`` keys (all the run-time glue needs, numpy only):

    pipeline            the graphs above, after "vad" (Silero VAD: VocalNet is turn-based)
    input_sample_rate   16000; listen: window_samples, n_frames, k (projector stride), rows
    output_sample_rate  24000
    tokenizer           the VocalNet folder's tokenizer.json, copied
    llm                 hidden, vocab_size, max_context, prefill_max_tokens, embed_tokens (file),
                        prompt_ids (the chat template with -200 where the speech rows go),
                        eot_id, stop_ids, max_input_rows (tokenizer_model_max_length; 0 = none),
                        end_row_id (its embedding row closes the speech decoder's input: Llama's
                        <|eot_id|>, Qwen2.5's <|endoftext|>), family ("llama" | "qwen2")
    speech              bos/sos/eos ids, heads (1 + MTP heads used), unit_vocab, txt_token_num,
                        speech_token_num, reset_interval, max_text_rows, max_speech_rows, streaming penalty
    flow                mel_bins, token_mel_ratio, pre_lookahead, euler ([t, dt] per step),
                        chunk_tokens, chunk_advance, final_hop, max_tokens, max_frames,
                        voice_file, noise_file, voice_prompt (how the voice prompt was made:
                        made_from "onnx" | "prompt_inputs" | "seeded", and its files' hashes)
    hift                sample_rate, samples_per_frame, harmonics, mel_cache_frames, max_frames
    licenses, source    weights' licenses and provenance; checkpoint: the folders and their stamp
    published_budget    added by export: VocalNet-1B's and 8B's published shapes against every hw/
                        profile at fp16 (``edgevoice.recipes.vocalnet.published``)
    memory_budget       added by export: this package against its target
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevoice.errors import EdgevoiceError
from edgevoice.models.llm import LlmModel, LlmStep
from edgevoice.models.vocalnet.flow import FlowModel, euler_schedule
from edgevoice.models.vocalnet.hift import HiftGenerator
from edgevoice.models.vocalnet.listen import VocalNetListen
from edgevoice.models.vocalnet.speech_decoder import (
    MtpSpeechDecoder,
    speech_decoder_steps,
)
from edgevoice.recipes.base import Recipe, RecipeComponent
from edgevoice.recipes.freeze_omni.listen import write_float_table
from edgevoice.recipes.freeze_omni.recipe import weights_stamp
from edgevoice.recipes.silero_vad import LICENSE as VAD_LICENSE
from edgevoice.recipes.silero_vad import recipe as vad_recipe
from edgevoice.recipes.vocalnet import graphs
from edgevoice.recipes.vocalnet import voice as vn_voice
from edgevoice.recipes.vocalnet.voice import VoicePrompt

COMPONENTS = ("vad", "vn_listen", "vn_llm", "speech_text", "speech_units", "flow_encoder", "flow_step",
              "hift_source", "hift_decode")
EMBED_FILE = "vn_embed_tokens.npy"
TOKENIZER_FILE = "tokenizer.json"
LICENSE = ("VocalNet weights: Apache-2.0 (SJTU-OmniAgent/VocalNet); LLM: Llama 3.2 Community License; "
           "Whisper-large-v3 encoder: MIT (OpenAI); CosyVoice2 flow and HiFT: Apache-2.0 (FunAudioLLM)")
QWEN_LICENSE = ("VocalNet weights: Apache-2.0 (SJTU-OmniAgent/VocalNet); LLM: Qwen2.5 (Apache-2.0 for 7B; check the "
                "base model's license); Whisper-large-v3 encoder: MIT (OpenAI); CosyVoice2 flow and HiFT: Apache-2.0 "
                "(FunAudioLLM)")
MTP_USED = 2  # infer_mtp_token_num in vocalnet.py and vocalnet_streaming.py
STREAM_PENALTY = {"penalty_window": 6, "penalty": 2.0}  # streaming_predict_mtp's defaults
NOISE_SEED = 1234


@dataclass(frozen=True)
class VocalNetLimits:
    """Capacities fixed at export (cache and input sizes of the graphs)."""

    max_context: int = 1024  # LLM KV rows: prompt (~75) + speech rows (<= 300) + reply
    prefill_max_tokens: int = 64  # rows per vn_llm call
    max_text_rows: int = 520  # speech decoder text region: BOS + reply rows
    max_speech_rows: int = 2048  # speech decoder units per module (the reference's max_tokens)
    max_reply_units: int = 1000  # units one flow call sees (40 s of speech at 25 units/s)
    hift_max_frames: int = 2048  # mel frames per vocoder call (streamed chunks: <= 114; a whole reply: more)


@dataclass(frozen=True)
class VocalNetParts:
    """Every module of a VocalNet package, built and loaded."""

    listen: VocalNetListen
    llm: LlmModel
    decoder: MtpSpeechDecoder
    flow: FlowModel
    hift: HiftGenerator
    voice: VoicePrompt
    tokenizer_json: Path
    prompt_ids: list[int]
    eot_id: int
    stop_ids: list[int]
    max_input_rows: int = 0
    end_row_id: int | None = None  # None: eot_id (the Llama family)
    family: str = "llama"  # the LLM kind: "llama" | "qwen2" (edgevoice.weights.vocalnet.chat)


# --- the recipe ------------------------------------------------------------------------------


def recipe(weights: str | Path | None = None, cosyvoice: str | Path | None = None, whisper: str | Path | None = None,
           limits: VocalNetLimits = VocalNetLimits()) -> Recipe:
    """VocalNet from its model folder, the Whisper folder it names and a CosyVoice2 folder."""
    if weights is None or cosyvoice is None:
        raise EdgevoiceError("vocalnet needs --weights VOCALNET_DIR (e.g. checkpoints/VocalNet-1B) and "
                             "--cosyvoice COSYVOICE_DIR (CosyVoice2-0.5B); or export --model vocalnet-tiny")
    parts = load_parts(Path(weights), Path(cosyvoice), Path(whisper) if whisper else None, limits)
    folders = [weights, cosyvoice] + ([whisper] if whisper else [])
    checkpoint = {"weights": str(Path(weights).resolve()), "cosyvoice": str(Path(cosyvoice).resolve()),
                  "whisper": str(Path(whisper).resolve()) if whisper else None, "stamp": weights_stamp(*folders)}
    source = f"VocalNet folder {Path(weights).resolve()}, CosyVoice2 folder {Path(cosyvoice).resolve()}"
    license = QWEN_LICENSE if parts.family == "qwen2" else LICENSE
    return assemble("vocalnet", parts, limits, license, source, extra_config={"checkpoint": checkpoint})


def load_parts(weights: Path, cosyvoice: Path, whisper: Path | None, limits: VocalNetLimits) -> VocalNetParts:
    from edgevoice.weights.vocalnet.chat import read_chat_facts
    from edgevoice.weights.vocalnet.checkpoint import (
        build_listen,
        build_llm,
        load_vocalnet_checkpoint,
    )
    from edgevoice.weights.vocalnet.cosyvoice import hift_load, load_flow
    from edgevoice.weights.vocalnet.speech_decoder import load_speech_decoder

    for flag, folder in (("--weights", weights), ("--cosyvoice", cosyvoice), ("--whisper", whisper)):
        if folder is not None and not folder.is_dir():
            raise EdgevoiceError(f"{flag} {folder} is not a directory; pass the published folder")
    ckpt = load_vocalnet_checkpoint(weights, whisper, max_context=limits.max_context,
                                    prefill_max_tokens=limits.prefill_max_tokens)
    decoder = load_speech_decoder(ckpt.speech_generator, ckpt.config.generator, str(weights), mtp_used=MTP_USED,
                                  max_text_rows=limits.max_text_rows, max_speech_rows=limits.max_speech_rows)
    flow, hift = load_flow(cosyvoice), hift_load(cosyvoice)
    cfg = flow.cfg
    voice = vn_voice.load_voice(cosyvoice, cfg.token_mel_ratio, cfg.mel_bins, cfg.spk_embed_dim, cfg.vocab_size)
    chat = read_chat_facts(weights)  # the family's template and special ids, from the folder
    return VocalNetParts(build_listen(ckpt), build_llm(ckpt), decoder, flow, hift, voice, weights / TOKENIZER_FILE,
                         list(chat.prompt_ids), chat.eot_id, list(chat.stop_ids), ckpt.config.tokenizer_max_length,
                         chat.end_row_id, chat.family)


# --- components and config -------------------------------------------------------------------


def assemble(name: str, parts: VocalNetParts, limits: VocalNetLimits, license: str, source: str,
             extra_config: dict[str, Any] | None = None, with_vad: bool = True) -> Recipe:
    """The package's components (Silero VAD first) and manifest config from loaded parts."""
    components = vocalnet_components(parts, limits, license)
    config = {**package_config(parts, limits, [c.name for c in components]), "licenses": {"weights": license},
              "source": source, **(extra_config or {})}
    recipe = Recipe(name=name, components=components, config=config)
    if not with_vad:
        return recipe
    vad = vad_recipe()
    config = {**config, "pipeline": ["vad", *config["pipeline"]], "licenses": {**config["licenses"], "vad": VAD_LICENSE}}
    return Recipe(name=name, components=[*vad.components, *components], config=config,
                  upstream={**recipe.upstream, **vad.upstream})


def flow_max_tokens(parts: VocalNetParts, limits: VocalNetLimits) -> int:
    return int(parts.voice.tokens.size) + limits.max_reply_units


def vocalnet_components(parts: VocalNetParts, limits: VocalNetLimits, license: str) -> list[RecipeComponent]:
    flow_tokens = flow_max_tokens(parts, limits)
    flow_frames = flow_tokens * parts.flow.cfg.token_mel_ratio
    table = write_float_table(parts.llm.model.embed_tokens.weight, "vn-embed")
    steps = speech_decoder_steps(parts.decoder)
    shared = {"shared_state_with": ["speech_text", "speech_units"]}
    llm_tolerance = {"fp32": (2e-3, 1e-4), "fp16": (0.5, 5e-2)}
    seed = 0
    return [
        RecipeComponent("vn_listen", parts.listen, {"sample_rate": parts.listen.config.sample_rate}, license,
                        parity_feeds=lambda: _audio_feeds(parts.listen.config.window_samples, seed)),
        RecipeComponent("vn_llm", LlmStep(parts.llm, tokens=None, inputs="embeds"),
                        {"embed_tokens": EMBED_FILE, "hidden": parts.llm.config.hidden}, license,
                        parity_feeds=lambda: _llm_feeds(parts.llm.config.hidden, seed), parity_tolerance=llm_tolerance,
                        files={EMBED_FILE: table, TOKENIZER_FILE: parts.tokenizer_json}),
        RecipeComponent("speech_text", steps["speech_text"], dict(shared), license,
                        parity_feeds=lambda: _text_feeds(parts.decoder.config.width, seed)),
        RecipeComponent("speech_units", steps["speech_units"], dict(shared), license,
                        parity_feeds=lambda: _unit_feeds(parts.decoder.config)),
        RecipeComponent("flow_encoder", graphs.FlowEncoderStep(parts.flow, flow_tokens), {}, license,
                        parity_feeds=lambda: _flow_encoder_feeds(parts, seed),
                        files={vn_voice.VOICE_FILE: vn_voice.write_voice(parts.voice),
                               vn_voice.NOISE_FILE: vn_voice.write_noise(
                                   vn_voice.flow_noise(parts.flow.cfg.mel_bins, flow_frames, NOISE_SEED))}),
        RecipeComponent("flow_step", graphs.FlowEulerStep(parts.flow, flow_frames), {}, license,
                        parity_feeds=lambda: _flow_step_feeds(parts.flow.cfg.mel_bins, seed)),
        RecipeComponent("hift_source", graphs.HiftSourceGraph(parts.hift, limits.hift_max_frames), {}, license,
                        parity_feeds=lambda: _hift_feeds(parts.hift, seed, source=True)),
        RecipeComponent("hift_decode", graphs.HiftDecodeGraph(parts.hift, limits.hift_max_frames), {}, license,
                        parity_feeds=lambda: _hift_feeds(parts.hift, seed, source=False),
                        parity_tolerance={"fp32": (1e-3, 1e-3), "fp16": (1e-2, 1e-2)}),
    ]


def package_config(parts: VocalNetParts, limits: VocalNetLimits, pipeline: list[str]) -> dict[str, Any]:
    """The manifest config (see the module docstring)."""
    enc, llm, dec, flow, hift = parts.listen.config, parts.llm.config, parts.decoder.config, parts.flow.cfg, parts.hift.config
    euler = [[float(t), float(dt)] for t, dt in euler_schedule(flow.n_timesteps, flow.t_scheduler)]
    flow_tokens = flow_max_tokens(parts, limits)
    return {
        "pipeline": pipeline,
        "input_sample_rate": enc.sample_rate,
        "output_sample_rate": hift.sampling_rate,
        "tokenizer": TOKENIZER_FILE,
        "listen": {"window_samples": enc.window_samples, "n_frames": enc.n_frames, "k": parts.listen.projector.k,
                   "rows": parts.listen.rows},
        "llm": {"hidden": llm.hidden, "vocab_size": llm.vocab_size, "max_context": llm.max_context,
                "prefill_max_tokens": llm.prefill_max_tokens, "embed_tokens": EMBED_FILE,
                "prompt_ids": list(parts.prompt_ids), "eot_id": parts.eot_id, "stop_ids": list(parts.stop_ids),
                "max_input_rows": parts.max_input_rows, "family": parts.family,
                "end_row_id": parts.eot_id if parts.end_row_id is None else parts.end_row_id},
        "speech": {"bos_id": dec.bos_id, "sos_id": dec.sos_id, "eos_id": dec.eos_id, "heads": dec.heads_per_step,
                   "unit_vocab": dec.unit_vocab, "txt_token_num": 5, "speech_token_num": 15,
                   "reset_interval": 50,  # VocalNetModelStream's default (steps before a sentence end resets)
                   "max_text_rows": dec.max_text_rows, "max_speech_rows": dec.max_speech_rows, **STREAM_PENALTY},
        "flow": {"mel_bins": flow.mel_bins, "token_mel_ratio": flow.token_mel_ratio, "pre_lookahead": flow.pre_lookahead,
                 "euler": euler, "chunk_tokens": 15, "chunk_advance": 12, "final_hop": 2 * flow.input_frame_rate,
                 "max_tokens": flow_tokens, "max_frames": flow_tokens * flow.token_mel_ratio,
                 "voice_file": vn_voice.VOICE_FILE, "noise_file": vn_voice.NOISE_FILE,
                 "voice_prompt": dict(parts.voice.origin)},  # how the prompt was made (onnx / prompt_inputs / seeded)
        "hift": {"sample_rate": hift.sampling_rate, "samples_per_frame": hift.samples_per_frame,
                 "harmonics": hift.harmonics, "mel_cache_frames": 8, "max_frames": limits.hift_max_frames},
    }


# --- parity feeds (export --verify) ----------------------------------------------------------


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _audio_feeds(window: int, seed: int) -> list[dict[str, np.ndarray]]:
    audio = np.zeros((1, window), np.float32)
    audio[0, :16000] = 0.1 * _rng(seed).standard_normal(16000)
    return [{"audio": audio}]


def _llm_feeds(hidden: int, seed: int) -> list[dict[str, np.ndarray]]:
    rows = _rng(seed).standard_normal((1, 9, hidden)).astype(np.float32)
    return [{"input_embeds": rows[:, :8], "position": np.array([0])},
            {"input_embeds": rows[:, 8:], "position": np.array([8])}]


def _text_feeds(width: int, seed: int) -> list[dict[str, np.ndarray]]:
    rows = _rng(seed).standard_normal((1, 8, width)).astype(np.float32)
    return [{"rows": rows[:, :5], "prenn_len": np.array([0]), "text_len": np.array([0])},
            {"rows": rows[:, 5:], "prenn_len": np.array([5]), "text_len": np.array([6])}]


def _unit_feeds(config) -> list[dict[str, np.ndarray]]:
    n = config.heads_per_step
    first = {"tokens": np.array([[config.sos_id]]), "text_len": np.array([0]), "speech_len": np.zeros((1, n), np.int64)}
    later = {"tokens": np.arange(n, dtype=np.int64)[None] + 7, "text_len": np.array([0]),
             "speech_len": np.ones((1, n), np.int64)}
    return [first, later] if n > 1 else [first]


def _flow_encoder_feeds(parts: VocalNetParts, seed: int) -> list[dict[str, np.ndarray]]:
    tokens = np.concatenate([parts.voice.tokens, _rng(seed).integers(0, parts.flow.cfg.vocab_size, 15)])[None]
    return [{"tokens": tokens.astype(np.int64), "speaker_embedding": parts.voice.embedding[None]}]


def _flow_step_feeds(mel_bins: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng, frames = _rng(seed), 40
    x, mu, cond = (rng.standard_normal((1, mel_bins, frames)).astype(np.float32) for _ in range(3))
    return [{"x": x, "mu": mu, "spks": rng.standard_normal((1, mel_bins)).astype(np.float32), "cond": cond,
             "t": np.array([0.1], np.float32), "dt": np.array([0.05], np.float32)}]


def _hift_feeds(hift: HiftGenerator, seed: int, source: bool) -> list[dict[str, np.ndarray]]:
    c, rng, frames = hift.config, _rng(seed), 12
    mel = rng.standard_normal((1, c.in_channels, frames)).astype(np.float32)
    if source:
        return [{"mel": mel, "phase": rng.uniform(-np.pi, np.pi, (1, c.harmonics)).astype(np.float32),
                 "noise": rng.standard_normal((1, c.harmonics, frames, c.samples_per_frame)).astype(np.float32)}]
    return [{"mel": mel, "source": (0.1 * rng.standard_normal((1, 1, frames, c.samples_per_frame))).astype(np.float32)}]

