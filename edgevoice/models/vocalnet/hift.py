"""CosyVoice2's HiFT vocoder (neural source filter + iSTFT head): mel frames -> 24 kHz audio.

Behaviour follows VocalNet's bundled ``cosyvoice/hifigan/generator.py`` (``HiFTGenerator``,
``SineGen``, ``SourceModuleHnNSF``, ``ResBlock``) and ``cosyvoice/hifigan/f0_predictor.py``
(``ConvRNNF0Predictor``). Differences that keep the graphs exportable and deterministic:

* weight norm is folded into plain convolution weights when the checkpoint is read;
* the reference draws the sine phases and the Gaussian noise inside ``SineGen``; here both are
  inputs (``phase``, ``noise``) that the host fills from a seeded generator;
* ``torch.stft`` / ``torch.istft`` become a strided convolution and a transposed convolution with
  fixed (windowed DFT) bases, so no complex tensors reach ONNX;
* the within-frame phase ramp is built per mel frame (the F0 is constant over a frame after the
  nearest up-sampling), so the running phase sum is over frames, not over every sample.

Two exportable steps share the weights: :class:`HiftSourceStep` (mel -> F0, excitation) and
:class:`HiftDecodeStep` (mel, excitation -> audio). The host sits between them to paste the
streaming source cache over the excitation (``edgevoice/runtime/vocalnet/vocoder_stream.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HiftConfig:
    """The ``hift:`` section of CosyVoice2's yaml (release values as defaults)."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_cond_channels: int = 512

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per mel frame (480 at 24 kHz)."""
        return math.prod(self.upsample_rates) * self.hop_len

    @property
    def harmonics(self) -> int:
        """Sine components of the source: the fundamental plus ``nb_harmonics`` overtones."""
        return self.nb_harmonics + 1

    @property
    def spectrum_bins(self) -> int:
        return self.n_fft // 2 + 1


class Snake(nn.Module):
    """x + sin²(αx)/α per channel (α on a linear scale, as the reference's resblocks use it)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        alpha = self.alpha[None, :, None]
        return x + torch.sin(x * alpha).pow(2) / (alpha + 1e-9)


class ResBlock(nn.Module):
    """Per dilation: Snake -> dilated conv -> Snake -> conv, added to the input."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for act1, conv1, act2, conv2 in zip(self.activations1, self.convs1, self.activations2, self.convs2):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class F0Predictor(nn.Module):
    """Five conv3 + ELU layers and a linear head; |head| is the F0 in Hz per mel frame."""

    def __init__(self, in_channels: int, cond_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # [B, 80, T] -> [B, T]
        hidden = self.condnet(mel).transpose(1, 2)  # [B, T, C]
        return self.classifier(hidden).squeeze(-1).abs()


class HarmonicSource(nn.Module):
    """SineGen + SourceModuleHnNSF: F0 -> harmonic sines (+ noise) merged into one excitation."""

    def __init__(self, config: HiftConfig) -> None:
        super().__init__()
        self.config = config
        self.l_linear = nn.Linear(config.harmonics, 1)
        ramp = torch.arange(1, config.samples_per_frame + 1, dtype=torch.float32)  # sample k of a frame -> k+1
        self.register_buffer("ramp", ramp, persistent=False)
        orders = torch.arange(1, config.harmonics + 1, dtype=torch.float32)
        self.register_buffer("orders", orders, persistent=False)

    def forward(self, f0: torch.Tensor, phase: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """f0 [B, T] Hz, phase [B, H] rad, noise [B, H, T*P] ~ N(0,1) -> excitation [B, 1, T*P]."""
        cfg = self.config
        batch, frames = f0.shape
        step = f0[:, None, :] * self.orders[None, :, None] / cfg.sampling_rate  # [B, H, T] cycles per sample
        # Phase at the start of each frame: the running sum of whole frames, kept in [0, 1).
        per_frame = step * cfg.samples_per_frame
        start = torch.cumsum(per_frame, dim=-1) - per_frame
        start = start - torch.floor(start)
        cycles = start[..., None] + step[..., None] * self.ramp  # [B, H, T, P]
        cycles = (cycles - torch.floor(cycles)).reshape(batch, cfg.harmonics, -1)  # [B, H, N]
        sines = cfg.nsf_alpha * torch.sin(2 * math.pi * cycles + phase[:, :, None])
        voiced = (f0 > cfg.voiced_threshold).to(f0.dtype)  # [B, T]
        voiced = voiced[:, :, None].expand(batch, frames, cfg.samples_per_frame).reshape(batch, 1, -1)  # [B, 1, N]
        noise_amp = voiced * cfg.nsf_sigma + (1 - voiced) * (cfg.nsf_alpha / 3)
        sines = sines * voiced + noise_amp * noise  # [B, H, N]
        merged = self.l_linear(sines.transpose(1, 2))  # [B, N, 1]
        return torch.tanh(merged).transpose(1, 2)


def _hann(n_fft: int) -> torch.Tensor:
    """Periodic Hann window (scipy ``get_window('hann', n, fftbins=True)``), in float64."""
    n = torch.arange(n_fft, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)


def stft_basis(n_fft: int) -> torch.Tensor:
    """[2*bins, 1, n_fft]: windowed cos rows (real part) then -sin rows (imaginary part)."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    angle = 2 * math.pi * k * n / n_fft
    basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * _hann(n_fft)
    return basis[:, None, :].float()


def istft_basis(n_fft: int) -> torch.Tensor:
    """[2*bins, 1, n_fft]: one-sided inverse DFT rows times the synthesis window.

    Interior bins count twice (their mirrored half); the imaginary parts of the DC and Nyquist
    bins drop out, as in ``irfft``.
    """
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    weight = torch.full_like(k, 2.0)
    weight[0] = weight[-1] = 1.0
    angle = 2 * math.pi * k * n / n_fft
    basis = torch.cat([weight * torch.cos(angle), -weight * torch.sin(angle)]) * _hann(n_fft) / n_fft
    return basis[:, None, :].float()


class HiftGenerator(nn.Module):
    """The whole vocoder; parameter names match ``hift.pt`` after weight norm is folded."""

    def __init__(self, config: HiftConfig) -> None:
        super().__init__()
        self.config = config
        cfg, base = config, config.base_channels
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.f0_cond_channels)
        self.m_source = HarmonicSource(cfg)
        self.conv_pre = nn.Conv1d(cfg.in_channels, base, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        )
        self.source_downs, self.source_resblocks = nn.ModuleList(), nn.ModuleList()
        # The source spectrum (one frame per hop) is brought down to each stage's rate.
        rates = [1, *cfg.upsample_rates[::-1][:-1]]
        for i, (k, d) in enumerate(zip(cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes)):
            ch, u = base // 2 ** (i + 1), math.prod(rates[: len(rates) - i])
            down = nn.Conv1d(2 * cfg.spectrum_bins, ch, 1) if u == 1 else nn.Conv1d(2 * cfg.spectrum_bins, ch, 2 * u, u, padding=u // 2)
            self.source_downs.append(down)
            self.source_resblocks.append(ResBlock(ch, k, tuple(d)))
        self.resblocks = nn.ModuleList(
            ResBlock(base // 2 ** (i + 1), k, tuple(d))
            for i in range(len(cfg.upsample_rates))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        )
        self.conv_post = nn.Conv1d(base // 2 ** len(cfg.upsample_rates), 2 * cfg.spectrum_bins, 7, padding=3)
        # Fixed DSP tensors: derived from the config, never stored in checkpoints.
        self.register_buffer("stft_basis", stft_basis(cfg.n_fft), persistent=False)
        self.register_buffer("istft_basis", istft_basis(cfg.n_fft), persistent=False)
        self.register_buffer("window_sq", (_hann(cfg.n_fft) ** 2).float()[None, None, :], persistent=False)

    def source(self, mel: torch.Tensor, phase: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B, 80, T], phase [B, H], noise [B, H, T*P] -> (f0 [B, T], excitation [B, 1, T*P])."""
        f0 = self.f0_predictor(mel)
        return f0, self.m_source(f0, phase, noise)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel [B, 80, T], excitation [B, 1, T*P] -> audio [B, T*P] clamped to ±audio_limit."""
        cfg = self.config
        spectrum = self._stft(source)  # [B, 2*bins, T*P/hop + 1]
        x = self.conv_pre(mel)
        blocks = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = torch.cat([x[..., 1:2], x], dim=-1)  # ReflectionPad1d((1, 0))
            x = x + self.source_resblocks[i](self.source_downs[i](spectrum))
            x = sum(self.resblocks[i * blocks + j](x) for j in range(blocks)) / blocks
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as in the reference
        return self._istft(x).clamp(-cfg.audio_limit, cfg.audio_limit)

    def _stft(self, signal: torch.Tensor) -> torch.Tensor:
        """torch.stft(center=True, reflect padding, Hann) as a strided conv: [B, 1, N] -> [B, 2*bins, N/hop + 1]."""
        half = self.config.n_fft // 2
        left = torch.flip(signal[..., 1 : half + 1], dims=[-1])
        right = torch.flip(signal[..., -half - 1 : -1], dims=[-1])
        padded = torch.cat([left, signal, right], dim=-1)
        return F.conv1d(padded, self.stft_basis, stride=self.config.hop_len)

    def _istft(self, x: torch.Tensor) -> torch.Tensor:
        """conv_post output [B, 2*bins, F] (log-magnitude, phase) -> audio [B, hop*(F-1)]."""
        bins, hop, half = self.config.spectrum_bins, self.config.hop_len, self.config.n_fft // 2
        magnitude = torch.exp(x[:, :bins]).clamp(max=1e2)
        phase = torch.sin(x[:, bins:])  # the reference's (redundant) sin, kept for parity
        spectrum = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)
        frames = F.conv_transpose1d(spectrum, self.istft_basis, stride=hop)  # overlap-add: [B, 1, hop*(F-1)+n_fft]
        # Sum of squared windows over the frames covering each sample (fewer at the edges).
        envelope = F.conv_transpose1d(torch.ones_like(x[:, :1]), self.window_sq, stride=hop)
        return (frames / envelope)[:, 0, half:-half]


class HiftSourceStep(nn.Module):
    """Exportable graph: (mel, phase, noise) -> (f0, source). Holds only the modules it uses."""

    def __init__(self, generator: HiftGenerator) -> None:
        super().__init__()
        self.f0_predictor = generator.f0_predictor
        self.m_source = generator.m_source

    def forward(self, mel: torch.Tensor, phase: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f0 = self.f0_predictor(mel)
        return f0, self.m_source(f0, phase, noise)


class HiftDecodeStep(nn.Module):
    """Exportable graph: (mel, source) -> audio."""

    def __init__(self, generator: HiftGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return self.generator.decode(mel, source)
