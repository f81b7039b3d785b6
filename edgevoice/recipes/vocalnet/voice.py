"""The voice prompt and the flow's fixed noise: package data the vocoder side reads at run time.

The CosyVoice2 flow speaks in the voice of a prompt: its speech tokens (``prompt_token`` [P]), its
80-bin mel (``prompt_feat`` [2P, 80]) and a CAM++ speaker embedding (``embedding`` [192]). The
reference computes them from a prompt recording with two ONNX models of the CosyVoice2 folder
(``speech_tokenizer_v2.onnx``, ``campplus.onnx``); here they are read from a
``prompt_inputs.safetensors`` (the layout of the fixture's ``prompt/`` folder) and shipped, so
nothing at run time needs a speaker or tokenizer model.

The flow's start point is noise that the reference draws once (``rand_noise`` [1, 80, 15000])
and slices per call; the package ships a seeded draw of the frames the graphs can take.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevoice.errors import EdgevoiceError

PROMPT_INPUTS = "prompt_inputs.safetensors"
VOICE_FILE = "vn_voice.npz"  # prompt_token int64 [P], prompt_feat float32 [2P, 80], embedding float32 [S]
NOISE_FILE = "vn_flow_noise.npy"  # float32 [80, max_frames]
_FRONT_END_MODELS = ("campplus.onnx", "speech_tokenizer_v2.onnx")


@dataclass(frozen=True)
class VoicePrompt:
    tokens: np.ndarray  # (P,) int64 speech tokens of the prompt
    feat: np.ndarray  # (ratio * P, mel_bins) float32 prompt mel
    embedding: np.ndarray  # (S,) float32 speaker embedding (the flow normalises it)


def find_prompt_inputs(cosyvoice_dir: Path) -> Path:
    """``prompt_inputs.safetensors`` in the CosyVoice2 folder, its ``prompt/`` or a sibling ``prompt/``."""
    candidates = [cosyvoice_dir / PROMPT_INPUTS, cosyvoice_dir / "prompt" / PROMPT_INPUTS,
                  cosyvoice_dir.parent / "prompt" / PROMPT_INPUTS]
    for path in candidates:
        if path.is_file():
            return path
    has_models = all((cosyvoice_dir / name).is_file() for name in _FRONT_END_MODELS)
    hint = ("this folder has campplus.onnx and speech_tokenizer_v2.onnx, but computing the prompt with them is not "
            "implemented yet; " if has_models else "")
    raise EdgevoiceError(f"no voice prompt: {hint}put {PROMPT_INPUTS} (prompt_token, prompt_feat, embedding) in "
                         f"{cosyvoice_dir} or in a prompt/ folder next to it")


def read_voice(path: Path, token_mel_ratio: int, mel_bins: int, embed_dim: int, vocab: int) -> VoicePrompt:
    """The prompt inputs of ``path``, checked against the flow's sizes (one line naming what is off)."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    for key in ("prompt_token", "prompt_feat", "embedding"):
        if key not in tensors:
            raise EdgevoiceError(f"{path}: tensor '{key}' is missing; the voice prompt needs prompt_token, prompt_feat, embedding")
    tokens = tensors["prompt_token"].astype(np.int64).reshape(-1)
    feat = tensors["prompt_feat"].astype(np.float32)
    feat = feat[0] if feat.ndim == 3 else feat
    embedding = tensors["embedding"].astype(np.float32).reshape(-1)
    if feat.shape != (token_mel_ratio * tokens.size, mel_bins):
        raise EdgevoiceError(f"{path}: 'prompt_feat' has shape {feat.shape}, the flow needs "
                             f"({token_mel_ratio * tokens.size}, {mel_bins}) for {tokens.size} prompt tokens")
    if embedding.size != embed_dim:
        raise EdgevoiceError(f"{path}: 'embedding' has {embedding.size} values, the flow's speaker layer takes {embed_dim}")
    if tokens.size and not 0 <= tokens.min() <= tokens.max() < vocab:
        raise EdgevoiceError(f"{path}: 'prompt_token' holds ids outside 0..{vocab - 1}")
    return VoicePrompt(tokens, feat, embedding)


def seeded_voice(prompt_tokens: int, token_mel_ratio: int, mel_bins: int, embed_dim: int, vocab: int, seed: int) -> VoicePrompt:
    """A random voice prompt (random-weight packages)."""
    rng = np.random.default_rng(seed)
    return VoicePrompt(rng.integers(0, vocab, prompt_tokens).astype(np.int64),
                       rng.standard_normal((token_mel_ratio * prompt_tokens, mel_bins)).astype(np.float32),
                       (0.5 * rng.standard_normal(embed_dim)).astype(np.float32))


def flow_noise(mel_bins: int, frames: int, seed: int) -> np.ndarray:
    """(mel_bins, frames) float32 standard normal: the fixed start point of every flow call."""
    return np.random.default_rng(seed).standard_normal((mel_bins, frames), dtype=np.float32)


def _temp_file(stem: str, suffix: str, data: bytes) -> Path:
    folder = Path(tempfile.gettempdir()) / "edgevoice-vn"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"


def write_voice(voice: VoicePrompt) -> Path:
    """The voice as .npz in a temp folder named by content (export copies it into the package)."""
    key = voice.tokens.tobytes() + voice.feat.tobytes() + voice.embedding.tobytes()
    path = _temp_file("voice", ".npz", key)
    if not path.is_file():
        partial = path.with_name(path.stem + ".partial.npz")
        np.savez(partial, prompt_token=voice.tokens, prompt_feat=voice.feat, embedding=voice.embedding)
        partial.replace(path)
    return path


def write_noise(noise: np.ndarray) -> Path:
    path = _temp_file("noise", ".npy", noise.tobytes())
    if not path.is_file():
        partial = path.with_name(path.stem + ".partial.npy")
        np.save(partial, noise)
        partial.replace(path)
    return path
