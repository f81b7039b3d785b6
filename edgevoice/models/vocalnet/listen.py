"""VocalNet's listening side: 30 s of 16 kHz PCM -> speech rows in the LLM's embedding space.

    listen step:  audio (B, window samples)  ->  speech_embeds (B, n_audio_ctx // k, llm_hidden)

One graph holds the three stages the reference runs (``vocalnet.py`` ``__call__`` then
``OmniSpeechMetaForCausalLM.encode_speech``):

1. openai-whisper's ``log_mel_spectrogram(pad_or_trim(audio), n_mels=128)``: the cascade's
   ``LogMel`` front end in ``whole_window`` mode (peak over the whole padded window, padding
   frames kept), so the STFT lives in the graph as a strided conv;
2. the Whisper-large-v3 encoder (HF ``WhisperEncoder``: conv stem, sinusoid table, pre-LN blocks,
   final LayerNorm): the cascade's ``WhisperEncoder`` built from a ``WhisperConfig``;
3. ``EncoderProjectorConcat``: k consecutive frames concatenated, Linear -> ReLU -> Linear.

The host pads or trims PCM to the window (``pad_or_trim``) and keeps only the first
``speech_rows(num_samples)`` rows (``edgevoice.models.vocalnet.prompt``): the graph always encodes
the whole window, as the reference does, so its shapes are static.
"""

from __future__ import annotations

import torch
from torch import nn

from edgevoice.models.whisper.layers import LogMel
from edgevoice.models.whisper.model import WhisperConfig, WhisperEncoder
from edgevoice.streaming import InputSpec, StateSpec, StreamingModule


class SpeechProjector(nn.Module):
    """``EncoderProjectorConcat``; parameter names match the checkpoint's ``model.speech_projector.*``."""

    def __init__(self, k: int, encoder_dim: int, inner: int, llm_dim: int):
        super().__init__()
        self.k = k
        self.linear1 = nn.Linear(encoder_dim * k, inner)
        self.linear2 = nn.Linear(inner, llm_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # frames: (B, S, D) -> (B, S // k, llm_dim); the reference drops the S % k trailing frames
        b, s, d = frames.shape
        groups = s // self.k
        grouped = frames[:, : groups * self.k].reshape(b, groups, d * self.k)  # frame-major concat
        return self.linear2(torch.relu(self.linear1(grouped)))


class VocalNetListen(StreamingModule):
    """Front end + Whisper encoder + projector as one stateless step over a fixed window."""

    def __init__(self, encoder: WhisperConfig, k: int, inner: int, llm_dim: int):
        super().__init__()
        self.config = encoder
        self.front_end = LogMel(encoder.sample_rate, encoder.n_fft, encoder.hop, encoder.n_mels, encoder.n_frames,
                                whole_window=True)
        self.encoder = WhisperEncoder(encoder)
        self.projector = SpeechProjector(k, encoder.width, inner, llm_dim)

    @property
    def rows(self) -> int:  # speech rows per window
        return self.config.n_audio_ctx // self.projector.k

    def set_compute_dtype(self, dtype: torch.dtype) -> VocalNetListen:
        # The front end stays float32: power spectra span ~1e-10..1e6, beyond fp16.
        self.encoder.to(dtype)
        self.projector.to(dtype)
        self.compute_dtype = dtype
        return self

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("audio", ("batch", self.config.window_samples)),)

    def output_names(self) -> tuple[str, ...]:
        return ("speech_embeds",)

    def state_specs(self) -> tuple[StateSpec, ...]:
        return ()

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        # audio: (B, window) -> (B, n_mels, n_frames) float32
        return self.front_end(audio)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        # mel: (B, n_mels, n_frames) -> encoder last_hidden_state (B, n_audio_ctx, width)
        return self.encoder(mel.to(self.compute_dtype))

    def step(self, audio: torch.Tensor) -> tuple[torch.Tensor]:  # type: ignore[override]
        # audio: (B, window) zero-padded PCM -> speech_embeds (B, rows, llm_dim) float32
        return (self.projector(self.encode(self.log_mel(audio))).to(torch.float32),)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.step(audio)[0]
