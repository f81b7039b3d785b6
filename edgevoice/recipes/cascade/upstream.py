"""``export --verify`` for the cascade: each part against its upstream implementation, same weights.

- vad: Silero's own TorchScript model (``recipes/silero_vad.py``)
- turn: the Smart Turn graph shipped in pipecat-ai, fed by pipecat's own feature extractor
- asr: faster-whisper (CTranslate2) on the same tiny.en files: encoder output and transcript
- llm: transformers loading the same GGUF: logits over a chat prompt, and greedy tokens from the
  step the package ships as its one ``llm`` graph (prompt chunks, then one token per call)
- tts: the voice's own shipped graph; its import measures that (component parity in the manifest)

Each measurement has its own limit (``UpstreamCheck.limits``), stated where it is made. The speech
comes from espeak-ng, which the cascade's voice needs anyway. The upstream libraries are
reference-only: faster-whisper and transformers are imported here, never by the runtime.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import torch

from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.recipes.base import UpstreamCheck
from edgevoice.recipes.cascade import turn as turn_recipe
from edgevoice.recipes.cascade.whisper import decoding_facts, load_whisper, packaged_model_dir
from edgevoice.recipes.llm import GGUF_NAME, load_llm, smollm2_gguf_path

SPOKEN_QUESTION = "What is the capital of France?"
UNFINISHED_TURN = "I would like to know"
CHAT_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
GREEDY_TOKENS = 16
MAX_TRANSCRIPT_TOKENS = 40


def cascade_checks() -> dict[str, UpstreamCheck]:
    """The cascade's checks after the VAD's (the VAD recipe brings its own)."""
    return {
        "turn": UpstreamCheck(
            f"the Smart Turn graph shipped in {turn_recipe.REQUIREMENT} (activation Q/DQ removed), pipecat's features",
            smart_turn_vs_shipped,
            # Float math on both sides: only summation order differs (measured 1.3e-6 on 18 clips).
            {"prob_max_abs": turn_recipe.FLOAT_REFERENCE_ATOL},
        ),
        "asr": UpstreamCheck(
            "faster-whisper (CTranslate2) on the same tiny.en files",
            whisper_vs_faster_whisper,
            # Encoder states span about +-10; fp32 on both sides, different kernels (~1e-4 measured).
            {"encoder_max_abs": 2e-3, "transcript_differs": 0.0},
        ),
        "llm": UpstreamCheck(
            f"transformers loading the same {GGUF_NAME}",
            llm_vs_transformers,
            # Logits span about +-30; fp32 on both sides, summation order only (the LLM tests use 2e-3).
            {"logits_max_abs": 2e-3, "step_logits_max_abs": 2e-3, "greedy_tokens_differ": 0.0},
        ),
    }


# --- speech ----------------------------------------------------------------------------------


def spoken(text: str, sample_rate: int = 16000) -> np.ndarray:
    """``text`` spoken by espeak-ng as float32 mono at ``sample_rate``."""
    import soundfile

    from edgevoice.audio.resample import resample

    if shutil.which("espeak-ng") is None:
        raise EdgevoiceError("--verify speaks its test sentences with espeak-ng: install it (sh scripts/system-deps.sh)")
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    silence = np.zeros(int(0.3 * rate), np.float32)  # a turn ends in a little silence
    return resample(np.concatenate([samples, silence]), rate, sample_rate).astype(np.float32)


# --- turn --------------------------------------------------------------------------------------


def smart_turn_vs_shipped() -> dict[str, float]:
    model = turn_recipe.load_smart_turn()
    clips = {"complete": spoken(SPOKEN_QUESTION), "unfinished": spoken(UNFINISHED_TURN)}
    results = turn_recipe.turn_parity(model, clips)
    return {"prob_max_abs": max(r.to_float_reference() for r in results)}


# --- asr ---------------------------------------------------------------------------------------


def whisper_vs_faster_whisper() -> dict[str, float]:
    faster_whisper = _reference_library("faster_whisper", "faster-whisper")
    directory = packaged_model_dir()
    whisper, _ = load_whisper()
    reference = faster_whisper.WhisperModel(str(directory), device="cpu", compute_type="float32")
    speech = spoken(SPOKEN_QUESTION)
    ours_states, ours_text = _our_transcript(whisper, directory, speech)
    from faster_whisper.audio import pad_or_trim

    # What faster-whisper feeds its encoder: the content frames (its last one is padding), zero-padded.
    features = reference.feature_extractor(speech)  # (80, frames + 1)
    window = pad_or_trim(features[:, : features.shape[-1] - 1], whisper.config.n_frames)  # (80, 3000)
    theirs_states = np.array(reference.encode(window))  # (1, 1500, width)
    segments, _ = reference.transcribe(speech, language="en", beam_size=1, temperature=0.0, without_timestamps=True,
                                       condition_on_previous_text=False, vad_filter=False)
    theirs_text = "".join(s.text for s in segments).strip()
    return {
        "encoder_max_abs": float(np.max(np.abs(ours_states - theirs_states))),
        "transcript_differs": float(ours_text != theirs_text),
    }


def _our_transcript(whisper, directory, speech: np.ndarray) -> tuple[np.ndarray, str]:
    """Encoder states (1, 1500, width) and the greedy transcript of our torch port."""
    from tokenizers import Tokenizer

    from edgevoice.models.whisper.model import WhisperDecoderStep

    config = whisper.config
    window = np.zeros((1, config.window_samples), np.float32)
    window[0, : speech.size] = speech[: config.window_samples]
    facts = decoding_facts(directory, config.n_vocab, "en")
    with torch.no_grad():
        states = whisper.encoder(whisper.front_end(torch.from_numpy(window), torch.tensor([speech.size])))
        tokens = _greedy_tokens(WhisperDecoderStep(whisper), whisper.cross_attention_inputs(states), facts)
    text = Tokenizer.from_file(str(directory / "tokenizer.json")).decode(tokens)
    return states.numpy(), text.strip()


def _greedy_tokens(decoder, cross, facts: dict) -> list[int]:
    """Greedy decoding with faster-whisper's suppression rules, from the cached decoder step."""
    state, feed, offset, out = decoder.init_state(1), list(facts["prompt"]), 0, []
    while len(out) < MAX_TRANSCRIPT_TOKENS:
        logits, *state = decoder.step(torch.tensor([feed]), torch.tensor([offset]), *cross, *state)
        offset += len(feed)
        scores = logits[0, -1].clone()
        scores[facts["suppress_tokens"]] = -float("inf")
        if not out:
            scores[facts["suppress_at_begin"]] = -float("inf")
        token = int(scores.argmax())
        if token == facts["eot"]:
            break
        out.append(token)
        feed = [token]
    return out


# --- llm ---------------------------------------------------------------------------------------


def llm_vs_transformers() -> dict[str, float]:
    """Our SmolLM2 against transformers: full-sequence logits, and the shipped step (the ``llm``
    component, one graph for prefill and decode) both in its prefill logits and its greedy tokens."""
    import tempfile

    from edgevoice.recipes.llm import llm_components

    transformers = _reference_library("transformers", "transformers")
    path = smollm2_gguf_path()
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                  dtype=torch.float32).eval()
    loaded = load_llm(None, max_context=256)
    (component,) = llm_components(loaded=loaded, cache_dir=tempfile.mkdtemp(prefix="edgevoice-llm-check-"))
    from tokenizers import Tokenizer

    ids = Tokenizer.from_str(loaded.tokenizer_json).encode(CHAT_PROMPT, add_special_tokens=False).ids
    prompt = torch.tensor([ids])
    with torch.no_grad():
        ours, theirs = loaded.model(prompt)[0], reference(prompt).logits[0].float()
        expected = reference.generate(prompt, max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        got, prompt_logits = _greedy_through_step(component.module, ids, GREEDY_TOKENS)
    return {
        "logits_max_abs": float((ours - theirs).abs().max()),
        "step_logits_max_abs": float((prompt_logits - theirs[-1]).abs().max()),
        "greedy_tokens_differ": float(sum(a != b for a, b in zip(got, expected)) + abs(len(got) - len(expected))),
    }


def _greedy_through_step(step, ids: list[int], count: int) -> tuple[list[int], torch.Tensor]:
    """``count`` greedy tokens as the runtime makes them with the one graph: the prompt in chunks of
    up to ``prefill_max_tokens``, then one token per call, all through the same step and KV cache.
    Also the logits after the prompt (vocab,)."""
    state, position, chunk = step.init_state(1), 0, step.config.prefill_max_tokens
    feed, out, prompt_logits = list(ids), [], None
    while len(out) < count:
        for start in range(0, len(feed), chunk):
            piece = feed[start : start + chunk]
            outputs = step.step(torch.tensor([piece]), torch.tensor([position]), *state)
            logits, state = outputs[0], outputs[len(step.output_names()) :]  # logits (1, vocab), then the caches
            position += len(piece)
        prompt_logits = logits[0] if prompt_logits is None else prompt_logits
        out.append(int(logits[0].argmax()))
        feed = [out[-1]]
    return out, prompt_logits


def _reference_library(module: str, pip_name: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"--verify compares the cascade with {pip_name}: pip install '{pip_name}' (or edgevoice[dev])"
        ) from exc
