"""Whisper's building blocks: the log-mel front end, attention, and the residual blocks.

Kept apart from ``whisper.py`` so that file reads as the model's shape and streaming contract,
and this one as the math. Every layer is written with plain matmul/softmax/conv so the exported
graphs use only ops the TensorRT 10.3 ONNX parser accepts (no STFT, no fused attention op).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular mel filters on the Slaney scale with area normalization, (n_mels, n_fft//2 + 1).

    This is the filterbank Whisper was trained with (librosa's default ``htk=False, norm='slaney'``):
    linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    """
    hz_per_mel = 200.0 / 3.0
    knee_hz = 1000.0
    knee_mel = knee_hz / hz_per_mel
    log_step = math.log(6.4) / 27.0

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        linear = mel * hz_per_mel
        logarithmic = knee_hz * np.exp(log_step * (mel - knee_mel))
        return np.where(mel >= knee_mel, logarithmic, linear)

    top_mel = knee_mel + math.log(sample_rate / 2 / knee_hz) / log_step
    edges_hz = mel_to_hz(np.linspace(0.0, top_mel, n_mels + 2))  # (n_mels + 2,)
    bin_hz = np.arange(n_fft // 2 + 1) * sample_rate / n_fft  # (bins,)
    left, center, right = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None] - left) / (center - left)
    falling = (right - bin_hz[None]) / (right - center)
    triangles = np.clip(np.minimum(rising, falling), 0.0, None)
    # Area normalization: each filter integrates to about the same energy.
    return triangles * (2.0 / (right - left))


class LogMel(nn.Module):
    """Whisper's normalized log-mel spectrogram of a fixed window, computed in the graph.

    Why in the graph and not on the host: the STFT is a strided conv with a fixed cos/sin basis,
    which TensorRT 10.3 runs (it has no STFT op), the GPU does the work, and the numerics live in
    one place for every backend. The host only zero-pads PCM to the window and passes its length;
    the padding must be zeros (at least the first n_fft samples after ``length``), as in faster-whisper.

    It reproduces faster-whisper's features: the clamp to (max - 8) takes the max over the
    ``length // hop + 1`` frames its extractor computes, and frames from ``length // hop`` on are
    zero, as its ``pad_or_trim`` leaves them.

    With ``whole_window=True`` it reproduces openai-whisper's
    ``log_mel_spectrogram(pad_or_trim(audio))`` instead (what VocalNet feeds its encoder): the max
    runs over every frame of the padded window and padding frames keep their computed values;
    ``length`` is then not needed.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int, n_frames: int, whole_window: bool = False):
        super().__init__()
        self.n_fft, self.hop, self.n_frames = n_fft, hop, n_frames
        self.whole_window = whole_window
        n = np.arange(n_fft)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
        freqs = np.arange(n_fft // 2 + 1)[:, None] * n[None] * 2 * np.pi / n_fft  # (bins, n_fft)
        basis = np.concatenate([np.cos(freqs), np.sin(freqs)]) * window  # (2 * bins, n_fft)
        # Derived from the config, not weights: non-persistent, so loaders never see them.
        self.register_buffer("basis", torch.tensor(basis[:, None], dtype=torch.float32), persistent=False)
        filters = slaney_mel_filters(sample_rate, n_fft, n_mels)
        self.register_buffer("filters", torch.tensor(filters, dtype=torch.float32), persistent=False)

    def forward(self, audio: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        # audio: (B, S) zero-padded PCM, length: (B,) valid samples -> features (B, n_mels, n_frames)
        half = self.n_fft // 2
        # Reflect padding by hand (center=True): a Pad op in reflect mode is avoided for TensorRT.
        head = torch.flip(audio[:, 1 : half + 1], dims=[1])
        tail = torch.flip(audio[:, -half - 1 : -1], dims=[1])
        padded = torch.cat([head, audio, tail], dim=1).unsqueeze(1)  # (B, 1, S + n_fft)
        spec = nn.functional.conv1d(padded, self.basis, stride=self.hop)[..., : self.n_frames]
        bins = spec.shape[1] // 2
        power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2  # (B, bins, F)
        mel = torch.matmul(self.filters, power)  # (B, n_mels, F)
        log_mel = torch.log10(torch.clamp(mel, min=1e-10))
        if self.whole_window:
            peak = log_mel.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
            return (torch.maximum(log_mel, peak - 8.0) + 4.0) / 4.0
        if length is None:
            raise ValueError("LogMel needs the valid sample count `length` unless whole_window=True")
        frame = torch.arange(self.n_frames, device=audio.device)[None, None]  # (1, 1, F)
        last = (length // self.hop)[:, None, None]  # (B, 1, 1)
        # log10 of clamped power is >= -10, so -100 can never win the max.
        peak = torch.where(frame <= last, log_mel, torch.full_like(log_mel, -100.0)).amax(dim=(1, 2), keepdim=True)
        features = (torch.maximum(log_mel, peak - 8.0) + 4.0) / 4.0
        return torch.where(frame < last, features, torch.zeros_like(features))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))  # exact (erf) GELU, as Whisper


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    # (B, T, D) -> (B, H, T, D/H)
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    # (B, H, T, Dh) -> (B, T, H*Dh)
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention written out; ``mask`` (broadcast to (B, H, Tq, Tk)) is True where allowed."""
    # q: (B, H, Tq, Dh), k, v: (B, H, Tk, Dh) -> (B, H, Tq, Dh)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = torch.where(mask, scores, torch.full_like(scores, torch.finfo(scores.dtype).min))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class SelfAttention(nn.Module):
    """Multi-head attention with Whisper's bias layout: the key projection has no bias."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: (B, T, D) -> q, k, v each (B, T, D)
        return self.q(x), self.k(x), self.v(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.project(x)
        h = self.heads
        return self.out(merge_heads(attend(split_heads(q, h), split_heads(k, h), split_heads(v, h), mask)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block over the audio frames (no mask: the window is seen whole)."""

    def __init__(self, width: int, heads: int, ffn: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = Mlp(width, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, S, D)
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class CrossProjection(nn.Module):
    """One decoder layer's key/value projections of the encoder output.

    They run once per utterance in the encoder graph, not at every decoder step, and leave in the
    layout the decoder's attention multiplies by: split into heads, keys transposed. A decoder
    step then only reads them; on onnxruntime slicing and transposing them at every step took
    ~3 of its ~14 ms.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # audio: (B, S, D) -> keys (B, H, D/H, S), values (B, H, S, D/H)
        return split_heads(self.k(audio), self.heads).transpose(-1, -2), split_heads(self.v(audio), self.heads)


class CrossAttention(nn.Module):
    """Attention of text positions over precomputed audio keys/values (``CrossProjection``'s layout)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D), keys: (B, H, D/H, S), values: (B, H, S, D/H) -> (B, T, D)
        q = split_heads(self.q(x), self.heads)  # (B, H, T, D/H)
        scores = torch.matmul(q, keys) * (q.shape[-1] ** -0.5)  # (B, H, T, S)
        return self.out(merge_heads(torch.matmul(torch.softmax(scores, dim=-1), values)))


class DecoderBlock(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the audio, MLP."""

    def __init__(self, width: int, heads: int, ffn: int):
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attn = SelfAttention(width, heads)
        self.cross_norm = nn.LayerNorm(width)
        self.cross_attn = CrossAttention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = Mlp(width, ffn)

    def finish(self, x: torch.Tensor, attended: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The rest of the block once self-attention's output ``attended`` is known; ``keys`` and
        ``values`` are this layer's cross-attention inputs (``CrossProjection``)."""
        x = x + attended
        x = x + self.cross_attn(self.cross_norm(x), keys, values)
        return x + self.mlp(self.mlp_norm(x))
