"""The voice prompt from CosyVoice2's own front-end models, run once at export with onnxruntime.

What VocalNet's ``__init_vocoder__`` does with a prompt recording (``omni_speech/infer/vocalnet.py``,
``SpeechTokenizer.extract_speech_token`` / ``extract_speech_feat`` / ``extract_spk_embedding``; the
same front ends as CosyVoice's ``cosyvoice/cli/frontend.py``):

    prompt_16k = postprocess(load_wav(prompt, 16 kHz))                      (prompt_audio.py)
    prompt_token = speech_tokenizer_v2.onnx(feats = Whisper log-mel, 128 bins, of prompt_16k
                                            (1, 128, T) float32, feats_length = [T] int32)
                   -> "indices" (1, 1, T / 4) int, flattened                 25 tokens per second
    prompt_feat  = the flow's mel of Resample(16k -> 24k)(prompt_16k)        (F, 80), 50 frames per second
    embedding    = campplus.onnx(Kaldi fbank of prompt_16k: 80 bins, dither 0, minus its mean over
                                 time, (1, frames, 80) float32) -> (1, 192), flattened

then both are cut to a common length: ``n = min(F // ratio, len(prompt_token))`` tokens and
``ratio * n`` mel frames (ratio = the flow's token_mel_ratio, 2).

The Whisper log-mel is the project's own front end (``edgevoice.models.whisper.layers.LogMel``,
openai-whisper's ``log_mel_spectrogram`` with the peak taken over the whole signal); the Kaldi fbank
is kaldi-native-fbank's. Inputs are fed by position and outputs read by position, as the
reference does, so the files' tensor names do not matter. A prompt longer than 30 s is refused
(CosyVoice's front end asserts the same; the speech tokenizer's encoder covers 30 s).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.recipes.vocalnet.prompt_audio import (
    FlowMelConfig,
    flow_mel,
    load_prompt_wav,
    postprocess,
    sinc_resample,
)
from edgevoice.recipes.vocalnet.voice import (
    FRONT_END_MODELS,
    SPEAKER_MODEL,
    SPEECH_TOKENIZER,
    VoicePrompt,
)

TOKENIZER_RATE = 16000  # Hz: speech tokens and the speaker embedding
MAX_PROMPT_SECONDS = 30.0
WHISPER_N_FFT, WHISPER_HOP, WHISPER_MELS = 400, 160, 128
FBANK_BINS = 80


# --- features --------------------------------------------------------------------------------


def whisper_log_mel(audio: np.ndarray, n_mels: int = WHISPER_MELS) -> np.ndarray:
    """openai-whisper's ``log_mel_spectrogram(audio, n_mels)`` of the unpadded signal: (1, n_mels, N // 160) float32."""
    import torch

    from edgevoice.models.whisper.layers import LogMel

    frames = len(audio) // WHISPER_HOP  # torch.stft's N // hop + 1 frames, less the last one whisper drops
    front_end = LogMel(TOKENIZER_RATE, WHISPER_N_FFT, WHISPER_HOP, n_mels, frames, whole_window=True)
    with torch.no_grad():
        return front_end(torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None]).numpy()


def speaker_fbank(audio: np.ndarray) -> np.ndarray:
    """Kaldi fbank (80 bins, dither 0, Kaldi defaults otherwise) minus its time mean: (1, frames, 80) float32.

    The samples stay in [-1, 1] (the reference does not scale them to the int16 range).
    """
    try:
        import kaldi_native_fbank as knf
    except ImportError as exc:
        raise MissingDependencyError.for_module("kaldi_native_fbank", "export", "the speaker embedding of the voice prompt") from exc
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = float(TOKENIZER_RATE)
    opts.mel_opts.num_bins = FBANK_BINS
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(float(TOKENIZER_RATE), np.asarray(audio, np.float32).tolist())
    fbank.input_finished()
    feats = np.stack([np.asarray(fbank.get_frame(i), np.float32) for i in range(fbank.num_frames_ready)])
    return (feats - feats.mean(axis=0, keepdims=True))[None].astype(np.float32)


# --- the two ONNX models ---------------------------------------------------------------------


def open_session(path: Path, inputs: int):
    """A CPU onnxruntime session of ``path`` (one thread, as the reference), checked to take ``inputs`` inputs."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError.for_module("onnxruntime", "export", f"running {path.name}") from exc
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise EdgevoiceError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0]}); re-download it") from exc
    if len(session.get_inputs()) != inputs:
        raise EdgevoiceError(f"{path} takes {len(session.get_inputs())} inputs, CosyVoice2's {path.name} takes {inputs}; "
                             "is it the published file?")
    return session


def _mel_bins(session) -> int:
    """The tokenizer's mel bins from its input shape (feats: (batch, bins, frames)); 128 when symbolic."""
    dim = session.get_inputs()[0].shape[1] if len(session.get_inputs()[0].shape) == 3 else None
    return dim if isinstance(dim, int) else WHISPER_MELS


def speech_tokens(session, audio: np.ndarray) -> np.ndarray:
    """(P,) int64 speech tokens of 16 kHz ``audio`` (at most 30 s)."""
    seconds = len(audio) / TOKENIZER_RATE
    if seconds > MAX_PROMPT_SECONDS:
        raise EdgevoiceError(f"the voice prompt is {seconds:.1f} s after trimming; the speech tokenizer takes at most "
                             f"{MAX_PROMPT_SECONDS:.0f} s: use a shorter recording (3-10 s of speech is typical)")
    feats = whisper_log_mel(audio, _mel_bins(session))  # (1, bins, T)
    first, second = (spec.name for spec in session.get_inputs())
    indices = session.run(None, {first: feats, second: np.array([feats.shape[2]], np.int32)})[0]
    return np.asarray(indices).reshape(-1).astype(np.int64)


def speaker_embedding(session, audio: np.ndarray) -> np.ndarray:
    """(S,) float32 CAM++ embedding of 16 kHz ``audio``."""
    feats = speaker_fbank(audio)  # (1, frames, 80)
    output = session.run(None, {session.get_inputs()[0].name: feats})[0]
    return np.asarray(output, np.float32).reshape(-1)


# --- the voice prompt ------------------------------------------------------------------------


def align(tokens: np.ndarray, feat: np.ndarray, ratio: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut tokens (P,) and mel (F, bins) to n = min(F // ratio, P) tokens and ratio * n frames."""
    n = min(feat.shape[0] // ratio, tokens.size)
    return tokens[:n], feat[: ratio * n]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:  # in pieces: the speech tokenizer is ~500 MB
        for piece in iter(lambda: file.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def compute_voice(cosyvoice_dir: Path, wav: Path, mel: FlowMelConfig, token_mel_ratio: int) -> VoicePrompt:
    """The voice prompt of ``wav`` from the folder's campplus.onnx and speech_tokenizer_v2.onnx."""
    speech = postprocess(load_prompt_wav(wav, TOKENIZER_RATE))  # (N,) at 16 kHz
    tokens = speech_tokens(open_session(cosyvoice_dir / SPEECH_TOKENIZER, inputs=2), speech)
    feat = flow_mel(sinc_resample(speech, TOKENIZER_RATE, mel.sample_rate), mel)  # (F, num_mels)
    tokens, feat = align(tokens, feat, token_mel_ratio)
    if tokens.size == 0:
        raise EdgevoiceError(f"{wav}: the speech tokenizer returned no tokens for the prompt; record a longer prompt")
    embedding = speaker_embedding(open_session(cosyvoice_dir / SPEAKER_MODEL, inputs=1), speech)
    origin = {"made_from": "onnx", "prompt_wav": str(wav.resolve()), "prompt_wav_sha256": _sha256(wav),
              "models": {name: _sha256(cosyvoice_dir / name) for name in FRONT_END_MODELS},
              "prompt_seconds": round(len(speech) / TOKENIZER_RATE, 3), "prompt_tokens": int(tokens.size)}
    return VoicePrompt(tokens, np.ascontiguousarray(feat), embedding, origin)
