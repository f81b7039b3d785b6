"""The voice prompt and the flow's fixed noise: package data the vocoder side reads at run time.

The CosyVoice2 flow speaks in the voice of a prompt: its speech tokens (``prompt_token`` [P]), its
80-bin mel (``prompt_feat`` [2P, 80]) and a CAM++ speaker embedding (``embedding`` [192]). They are
made once, at export, and shipped, so nothing at run time needs a speaker or tokenizer model:

1. when the CosyVoice2 folder has ``campplus.onnx`` and ``speech_tokenizer_v2.onnx`` (the published
   folder names them so) and a ``prompt.wav`` is found, they are computed from the recording as the
   reference does (``edgevoice.recipes.vocalnet.prompt_models``, onnxruntime at export only);
2. otherwise they are read from a ``prompt_inputs.safetensors`` (the layout of the fixture's
   ``prompt/`` folder);
3. otherwise export is refused in one line naming what to add.

``prompt.wav`` and ``prompt_inputs.safetensors`` are looked for in the CosyVoice2 folder, its
``prompt/`` folder and a ``prompt/`` folder next to it. The manifest records which way was taken
(``config.flow.voice_prompt``).

The flow's start point is noise that the reference draws once (``rand_noise`` [1, 80, 15000])
and slices per call; the package ships a seeded draw of the frames the graphs can take.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgevoice.errors import EdgevoiceError

PROMPT_INPUTS = "prompt_inputs.safetensors"
PROMPT_WAV = "prompt.wav"
SPEECH_TOKENIZER = "speech_tokenizer_v2.onnx"
SPEAKER_MODEL = "campplus.onnx"
FRONT_END_MODELS = (SPEAKER_MODEL, SPEECH_TOKENIZER)
VOICE_FILE = "vn_voice.npz"  # prompt_token int64 [P], prompt_feat float32 [2P, 80], embedding float32 [S]
NOISE_FILE = "vn_flow_noise.npy"  # float32 [80, max_frames]


@dataclass(frozen=True)
class VoicePrompt:
    tokens: np.ndarray  # (P,) int64 speech tokens of the prompt
    feat: np.ndarray  # (ratio * P, mel_bins) float32 prompt mel
    embedding: np.ndarray  # (S,) float32 speaker embedding (the flow normalises it)
    origin: dict = field(default_factory=dict)  # how it was made: recorded in the manifest


def find_prompt_file(cosyvoice_dir: Path, name: str) -> Path | None:
    """``name`` in the CosyVoice2 folder, its ``prompt/`` or a sibling ``prompt/``; None if in none."""
    for folder in (cosyvoice_dir, cosyvoice_dir / "prompt", cosyvoice_dir.parent / "prompt"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_voice(cosyvoice_dir: Path, token_mel_ratio: int, mel_bins: int, embed_dim: int, vocab: int) -> VoicePrompt:
    """The voice prompt of a CosyVoice2 folder: computed with its ONNX front ends, else precomputed, else refused."""
    has_models = [(cosyvoice_dir / name).is_file() for name in FRONT_END_MODELS]
    wav = find_prompt_file(cosyvoice_dir, PROMPT_WAV)
    if all(has_models) and wav is not None:
        voice = _computed_voice(cosyvoice_dir, wav, token_mel_ratio)
        check_voice(voice, wav, token_mel_ratio, mel_bins, embed_dim, vocab)
        return voice
    inputs = find_prompt_file(cosyvoice_dir, PROMPT_INPUTS)
    if inputs is not None:
        return read_voice(inputs, token_mel_ratio, mel_bins, embed_dim, vocab)
    raise EdgevoiceError(_missing_prompt(cosyvoice_dir, has_models))


def _computed_voice(cosyvoice_dir: Path, wav: Path, token_mel_ratio: int) -> VoicePrompt:
    from edgevoice.recipes.vocalnet.prompt_audio import flow_mel_config
    from edgevoice.recipes.vocalnet.prompt_models import compute_voice
    from edgevoice.weights.vocalnet.cosyvoice import YAML_NAME, read_cosyvoice_yaml

    yaml_path = cosyvoice_dir / YAML_NAME
    return compute_voice(cosyvoice_dir, wav, flow_mel_config(read_cosyvoice_yaml(yaml_path), yaml_path), token_mel_ratio)


def _missing_prompt(cosyvoice_dir: Path, has_models: list[bool]) -> str:
    """One line: what the folder has and what to add for a voice prompt."""
    where = f"in {cosyvoice_dir} or in a prompt/ folder next to it"
    if all(has_models):
        return (f"no voice prompt: {cosyvoice_dir} has {' and '.join(FRONT_END_MODELS)} but no {PROMPT_WAV}; put the "
                f"prompt recording as {PROMPT_WAV} {where} (or {PROMPT_INPUTS} with prompt_token, prompt_feat, embedding)")
    missing = [name for name, present in zip(FRONT_END_MODELS, has_models) if not present]
    return (f"no voice prompt: add {' and '.join(missing)} (from the published CosyVoice2-0.5B folder) to "
            f"{cosyvoice_dir} and a {PROMPT_WAV} {where}, or put {PROMPT_INPUTS} (prompt_token, prompt_feat, "
            f"embedding) {where}")


def read_voice(path: Path, token_mel_ratio: int, mel_bins: int, embed_dim: int, vocab: int) -> VoicePrompt:
    """The precomputed prompt inputs of ``path``, checked against the flow's sizes (one line naming what is off)."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    for key in ("prompt_token", "prompt_feat", "embedding"):
        if key not in tensors:
            raise EdgevoiceError(f"{path}: tensor '{key}' is missing; the voice prompt needs prompt_token, prompt_feat, embedding")
    tokens = tensors["prompt_token"].astype(np.int64).reshape(-1)
    feat = tensors["prompt_feat"].astype(np.float32)
    feat = feat[0] if feat.ndim == 3 else feat
    embedding = tensors["embedding"].astype(np.float32).reshape(-1)
    origin = {"made_from": "prompt_inputs", "file": str(path.resolve()),
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    voice = VoicePrompt(tokens, feat, embedding, origin)
    check_voice(voice, path, token_mel_ratio, mel_bins, embed_dim, vocab)
    return voice


def check_voice(voice: VoicePrompt, where: Path, token_mel_ratio: int, mel_bins: int, embed_dim: int, vocab: int) -> None:
    """Refuse (one line) a prompt whose sizes or ids do not fit the flow."""
    tokens, feat = voice.tokens, voice.feat
    if feat.shape != (token_mel_ratio * tokens.size, mel_bins):
        raise EdgevoiceError(f"{where}: 'prompt_feat' has shape {feat.shape}, the flow needs "
                             f"({token_mel_ratio * tokens.size}, {mel_bins}) for {tokens.size} prompt tokens")
    if voice.embedding.size != embed_dim:
        raise EdgevoiceError(f"{where}: 'embedding' has {voice.embedding.size} values, the flow's speaker layer takes {embed_dim}")
    if tokens.size and not 0 <= tokens.min() <= tokens.max() < vocab:
        raise EdgevoiceError(f"{where}: 'prompt_token' holds ids outside 0..{vocab - 1}")


def seeded_voice(prompt_tokens: int, token_mel_ratio: int, mel_bins: int, embed_dim: int, vocab: int, seed: int) -> VoicePrompt:
    """A random voice prompt (random-weight packages)."""
    rng = np.random.default_rng(seed)
    return VoicePrompt(rng.integers(0, vocab, prompt_tokens).astype(np.int64),
                       rng.standard_normal((token_mel_ratio * prompt_tokens, mel_bins)).astype(np.float32),
                       (0.5 * rng.standard_normal(embed_dim)).astype(np.float32), {"made_from": "seeded", "seed": seed})


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
