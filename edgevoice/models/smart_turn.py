"""Smart Turn v3.2, the end-of-turn model: raw audio of the last 8 s -> P(the speaker is done).

    audio (B, 128000) float32 PCM at 16 kHz -> prob (B, 1) float32

The graph holds the whole chain the upstream runs partly on the host, so the runtime needs numpy
only: zero-mean unit-variance normalization of the waveform, Whisper's log-mel front end
(``LogMel``, 800 frames), a Whisper-tiny-sized encoder (400 positions), attention pooling over
time, a small classifier and the sigmoid.

The host's one job is to cut the window as the upstream analyzer does: keep the last 8 s of the
turn's audio and, when there is less, put zeros *before* it (left padding). The zeros count in the
normalization statistics, as they do upstream.

It is stateless: each call scores one whole window, so the streaming contract's step is the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.models.whisper.layers import LogMel
from edgevoice.models.whisper.model import WhisperConfig, WhisperEncoder
from edgevoice.streaming import InputSpec, StateSpec, StreamingModule


@dataclass(frozen=True)
class SmartTurnConfig:
    """Sizes of Smart Turn v3.x; the defaults are v3.2 as shipped in pipecat-ai."""

    sample_rate: int = 16000  # Hz of the PCM the front end takes
    window_seconds: int = 8  # the model sees the last 8 s of the turn
    n_mels: int = 80
    n_fft: int = 400  # STFT size: 25 ms
    hop: int = 160  # STFT hop: 10 ms
    width: int = 384  # encoder width D (Whisper tiny)
    heads: int = 6
    layers: int = 4
    ffn: int = 1536  # encoder MLP hidden width
    pool_hidden: int = 256  # hidden width of the attention-pooling scorer
    classifier_hidden: int = 256  # first classifier layer (followed by a LayerNorm)
    classifier_narrow: int = 64  # second classifier layer
    normalize_eps: float = 1e-7  # added to the waveform variance before the square root

    def __post_init__(self) -> None:
        if self.window_samples % self.hop or self.n_frames % 2:
            raise ValueError(
                f"a {self.window_seconds} s window at {self.sample_rate} Hz does not split into an even number "
                f"of {self.hop}-sample frames; pick a window that does"
            )

    @property
    def window_samples(self) -> int:  # PCM samples of one window (128000)
        return self.sample_rate * self.window_seconds

    @property
    def n_frames(self) -> int:  # mel frames of one window (800); the conv stem halves them
        return self.window_samples // self.hop

    @property
    def n_audio_ctx(self) -> int:  # encoder positions (400)
        return self.n_frames // 2

    def encoder_config(self) -> WhisperConfig:
        """The Whisper sizes of the encoder; the decoder fields are unused here."""
        return WhisperConfig(
            n_mels=self.n_mels, n_audio_ctx=self.n_audio_ctx, width=self.width, n_audio_heads=self.heads,
            n_audio_layers=self.layers, ffn=self.ffn, sample_rate=self.sample_rate, n_fft=self.n_fft, hop=self.hop,
        )


def normalize_waveform(audio: torch.Tensor, eps: float) -> torch.Tensor:
    """Zero mean, unit variance over the whole window (padding included), as the upstream extractor."""
    # audio: (B, S) -> (B, S)
    mean = audio.mean(dim=1, keepdim=True)  # (B, 1)
    centered = audio - mean
    variance = (centered * centered).mean(dim=1, keepdim=True)  # population variance, (B, 1)
    return centered / torch.sqrt(variance + eps)


class AttentionPooling(nn.Module):
    """A learned weighted mean over time: score each frame, softmax the scores, sum."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.hidden = nn.Linear(width, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, S, D) -> (B, D)
        weights = torch.softmax(self.score(torch.tanh(self.hidden(x))), dim=1)  # (B, S, 1)
        return (x * weights).sum(dim=1)


class TurnClassifier(nn.Module):
    """Pooled encoding -> one logit: Linear, LayerNorm, GELU, Linear, GELU, Linear."""

    def __init__(self, width: int, hidden: int, narrow: int):
        super().__init__()
        self.hidden = nn.Linear(width, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.narrow = nn.Linear(hidden, narrow)
        self.out = nn.Linear(narrow, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        # pooled: (B, D) -> logit (B, 1)
        x = nn.functional.gelu(self.norm(self.hidden(pooled)))  # exact (erf) GELU, as upstream
        return self.out(nn.functional.gelu(self.narrow(x)))


class SmartTurn(StreamingModule):
    """The whole model: what the loader fills, strictly, and the exported step."""

    def __init__(self, config: SmartTurnConfig = SmartTurnConfig()):
        super().__init__()
        self.config = config
        c = config
        self.front_end = LogMel(c.sample_rate, c.n_fft, c.hop, c.n_mels, c.n_frames)
        self.encoder = WhisperEncoder(c.encoder_config())
        self.pool = AttentionPooling(c.width, c.pool_hidden)
        self.classifier = TurnClassifier(c.width, c.classifier_hidden, c.classifier_narrow)
        self.chunk_size = c.window_samples
        # LogMel masks frames past a valid length; here the whole window is valid, so every one of
        # its n_frames frames is kept (the STFT's one extra last frame is dropped, as upstream
        # drops it). Non-persistent: not a weight.
        full = torch.tensor([c.window_samples], dtype=torch.int64)
        self.register_buffer("full_length", full, persistent=False)

    def set_compute_dtype(self, dtype: torch.dtype) -> SmartTurn:
        # Normalization and the front end stay float32: power spectra span ~1e-10..1e6, beyond fp16.
        for part in (self.encoder, self.pool, self.classifier):
            part.to(dtype)
        self.compute_dtype = dtype
        return self

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("audio", ("batch", self.config.window_samples)),)

    def output_names(self) -> tuple[str, ...]:
        return ("prob",)

    def state_specs(self) -> tuple[StateSpec, ...]:
        return ()

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """The log-mel features the upstream extractor computes on the host."""
        # audio: (B, window) -> (B, n_mels, n_frames) float32
        normalized = normalize_waveform(audio.to(torch.float32), self.config.normalize_eps)
        return self.front_end(normalized, self.full_length)

    def logit(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder, pooling and classifier on features; the shipped graph's part, before its sigmoid."""
        # features: (B, n_mels, n_frames) -> (B, 1) float32
        states = self.encoder(features.to(self.compute_dtype))  # (B, n_audio_ctx, D)
        return self.classifier(self.pool(states)).to(torch.float32)

    def step(self, audio: torch.Tensor) -> tuple[torch.Tensor]:
        # audio: (B, window) -> prob (B, 1)
        return (torch.sigmoid(self.logit(self.features(audio))),)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.step(audio)[0]
