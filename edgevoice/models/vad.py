"""Silero VAD v6 as an edgevoice component: STFT conv -> 4 conv blocks -> LSTM cell -> speech prob.

The upstream TorchScript model keeps its LSTM state and the last 64 samples of audio ("context")
inside the module and mutates them on every call. Here both are explicit state, so the step
exports to one ONNX graph with static shapes:

    step(chunk (B, 512), context (B, 64), lstm (2, B, 128)) -> (prob (B, 1), context', lstm')

(8 kHz: chunk 256, context 32.) Attribute names match the TorchScript state_dict keys after the
``_model.`` / ``_model_8k.`` prefix so weights load one to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.streaming import InputSpec, StateSpec, StreamingModule


@dataclass(frozen=True)
class VadConfig:
    """Shape of one Silero VAD branch; the two published branches are 16 kHz and 8 kHz."""

    sample_rate: int = 16000  # Hz; 16000 or 8000
    hidden: int = 128  # LSTM width and encoder output channels

    def __post_init__(self) -> None:
        if self.sample_rate not in (8000, 16000):
            raise ValueError(f"Silero VAD runs at 8000 or 16000 Hz, not {self.sample_rate}; resample first")

    @property
    def chunk_samples(self) -> int:  # samples per step: 32 ms
        return 512 if self.sample_rate == 16000 else 256

    @property
    def context_samples(self) -> int:  # previous samples prepended to each chunk
        return 64 if self.sample_rate == 16000 else 32

    @property
    def n_fft(self) -> int:  # STFT filter length
        return 256 if self.sample_rate == 16000 else 128

    @property
    def hop(self) -> int:
        return self.n_fft // 2


class ConvStft(nn.Module):
    """Magnitude STFT as a strided conv with a fixed basis (no STFT op: TensorRT 10.3 lacks it)."""

    def __init__(self, config: VadConfig):
        super().__init__()
        bins = config.n_fft // 2 + 1
        self.hop = config.hop
        self.pad = config.context_samples
        self.register_buffer("forward_basis_buffer", torch.zeros(2 * bins, 1, config.n_fft))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T) -> magnitude (B, bins, frames)
        # Right reflect padding by hand: flip of the `pad` samples before the last one.
        tail = torch.flip(x[:, -self.pad - 1 : -1], dims=[1])
        x = torch.cat([x, tail], dim=1).unsqueeze(1)  # (B, 1, T + pad)
        spec = nn.functional.conv1d(x, self.forward_basis_buffer, stride=self.hop)
        bins = spec.shape[1] // 2
        real, imag = spec[:, :bins], spec[:, bins:]
        return torch.sqrt(real * real + imag * imag)


class ConvBlock(nn.Module):
    """Conv1d(k=3, pad=1) + ReLU; the name `reparam_conv` matches the upstream weights."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.reparam_conv = nn.Conv1d(c_in, c_out, kernel_size=3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.reparam_conv(x))


class LstmCell(nn.Module):
    """LSTM cell written out as matmuls so the exported graph is plain MatMul/Sigmoid/Tanh."""

    def __init__(self, size: int):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.zeros(4 * size, size))
        self.weight_hh = nn.Parameter(torch.zeros(4 * size, size))
        self.bias_ih = nn.Parameter(torch.zeros(4 * size))
        self.bias_hh = nn.Parameter(torch.zeros(4 * size))

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x, h, c: (B, H); gate order i, f, g, o as in torch.nn.LSTMCell
        gates = x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class VadDecoder(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.rnn = LstmCell(hidden)
        # Dropout and the activations carry no weights; indices keep the upstream key names.
        self.decoder = nn.Sequential(nn.Dropout(0.1), nn.ReLU(), nn.Conv1d(hidden, 1, 1), nn.Sigmoid())

    def head(self, h: torch.Tensor) -> torch.Tensor:
        # h: (B, H) -> prob (B, 1)
        return self.decoder(h.unsqueeze(-1)).squeeze(-1)


class SileroVad(StreamingModule):
    """Silero VAD with explicit state. ``forward`` is the full-sequence call used by tests."""

    def __init__(self, config: VadConfig = VadConfig()):
        super().__init__()
        self.config = config
        self.chunk_size = config.chunk_samples
        h = config.hidden
        self.stft = ConvStft(config)
        bins = config.n_fft // 2 + 1
        self.encoder = nn.Sequential(
            ConvBlock(bins, h, 1), ConvBlock(h, 64, 2), ConvBlock(64, 64, 2), ConvBlock(64, h, 1)
        )
        self.decoder = VadDecoder(h)
        # Precision of everything after the STFT. The STFT magnitude stays float32: its squares
        # reach ~6.5e4 on loud audio, the top of the fp16 range.
        self.compute_dtype = torch.float32

    def set_compute_dtype(self, dtype: torch.dtype) -> "SileroVad":
        self.encoder.to(dtype)
        self.decoder.to(dtype)
        self.compute_dtype = dtype
        return self

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("chunk", ("batch", self.config.chunk_samples)),)

    def output_names(self) -> tuple[str, ...]:
        return ("prob",)

    def state_specs(self) -> tuple[StateSpec, ...]:
        c = self.config
        return (
            StateSpec("context", (1, c.context_samples), batch_dim=0),
            StateSpec("lstm", (2, 1, c.hidden), batch_dim=1),
        )

    def features(self, windows: torch.Tensor) -> torch.Tensor:
        # windows: (N, context + chunk) -> (N, H); one encoder frame per window
        mag = self.stft(windows).to(self.compute_dtype)
        return self.encoder(mag).squeeze(-1)

    def step(
        self, chunk: torch.Tensor, context: torch.Tensor, lstm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # chunk: (B, chunk), context: (B, ctx), lstm: (2, B, H) -> prob (B, 1), context', lstm'
        window = torch.cat([context, chunk], dim=1)
        feat = self.features(window)
        state = lstm.to(self.compute_dtype)
        h, c = self.decoder.rnn(feat, state[0], state[1])
        prob = self.decoder.head(h).to(torch.float32)
        new_context = window[:, -self.config.context_samples :]
        return prob, new_context, torch.stack([h, c]).to(torch.float32)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Speech probability of every chunk of ``audio`` (B, N*chunk) -> (B, N), from zero state."""
        c = self.config
        batch, total = audio.shape
        n = total // c.chunk_samples
        padded = torch.cat([audio.new_zeros(batch, c.context_samples), audio[:, : n * c.chunk_samples]], dim=1)
        windows = padded.unfold(1, c.context_samples + c.chunk_samples, c.chunk_samples)  # (B, N, W)
        feats = self.features(windows.reshape(batch * n, -1)).reshape(batch, n, -1)
        h = c_state = feats.new_zeros(batch, c.hidden)
        probs = []
        for t in range(n):  # the recurrence is inherently sequential
            h, c_state = self.decoder.rnn(feats[:, t], h, c_state)
            probs.append(self.decoder.head(h))
        return torch.cat(probs, dim=1).to(torch.float32)
