"""Freeze-Omni's streaming front end: Kaldi-compatible log-mel fbank + global CMVN, chunk by chunk.

The reference feeds 160 ms chunks of 16 kHz audio (2560 samples), scaled by 32768 to the int16
range, through Kaldi's fbank (25 ms povey window, 10 ms shift, pre-emphasis 0.97, DC removal,
power spectrum over a 512-point FFT, 80 triangular mel bins from 20 Hz to Nyquist, natural log
floored at float32 epsilon, ``snip_edges``). To make every call yield a whole number of frames it
keeps the last ``frame_length - frame_shift`` samples (240) of the previous chunk, so 2800
samples give exactly 16 frames, and it prepends the last 3 feature frames of the previous chunk
(the conv subsampling's receptive-field overlap), so the encoder sees 19 frames per chunk:

    step(chunk (B, 2560), samples (B, 240), frames (B, 3, 80)) -> (feats (B, 19, 80), samples', frames')

Both carries start as zeros, as in the reference (the first 3 rows of chunk 0 are raw zeros, not
the log floor). ``feats`` is after global CMVN, ``(x - mean) * istd``; the carried frames are
kept raw, before CMVN, like the reference's feature ring.

Everything from a frame's samples up to its complex spectrum (DC removal, pre-emphasis, window,
DFT) is linear, so it is one fixed (514, 1, 400) basis computed in float64 and applied as a
strided Conv1d: no FFT op (TensorRT 10.3 has none), no framing gather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.streaming import InputSpec, StateSpec, StreamingModule


@dataclass(frozen=True)
class FbankConfig:
    """Shape of the front end. Defaults are the published Freeze-Omni values."""

    sample_rate: int = 16000  # Hz
    mel_bins: int = 80  # fbank features per frame
    frame_length_ms: float = 25.0  # analysis window
    frame_shift_ms: float = 10.0  # hop
    new_frames: int = 16  # fbank frames per chunk = encoder chunk_size * subsampling rate
    overlap_frames: int = 3  # previous-chunk frames prepended = subsampling rate - 1
    sample_scale: float = 32768.0  # the reference scales [-1, 1] audio to the int16 range
    low_freq: float = 20.0  # Hz, lowest mel edge (Kaldi default)
    preemphasis: float = 0.97  # Kaldi default
    window_power: float = 0.85  # povey window = symmetric Hann ** 0.85

    @property
    def frame_length(self) -> int:  # samples per analysis window (400)
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def frame_shift(self) -> int:  # samples per hop (160)
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def chunk_samples(self) -> int:  # new samples per step (2560)
        return self.new_frames * self.frame_shift

    @property
    def carry_samples(self) -> int:  # samples kept from the previous chunk (240)
        return self.frame_length - self.frame_shift

    @property
    def n_fft(self) -> int:  # Kaldi rounds the window up to a power of two (512)
        return 1 << (self.frame_length - 1).bit_length()

    @property
    def out_frames(self) -> int:  # encoder input frames per step (19)
        return self.new_frames + self.overlap_frames


def _mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


def kaldi_mel_banks(config: FbankConfig) -> torch.Tensor:
    """Triangular mel filters (n_fft // 2 + 1, mel_bins) in float64, Kaldi's layout (Nyquist bin 0)."""
    half = config.n_fft // 2
    fft_freqs = torch.arange(half, dtype=torch.float64) * (config.sample_rate / config.n_fft)
    mel_low, mel_high = _mel(torch.tensor(config.low_freq)), _mel(torch.tensor(config.sample_rate / 2))
    delta = (mel_high - mel_low) / (config.mel_bins + 1)
    edges = mel_low + delta * torch.arange(config.mel_bins + 2, dtype=torch.float64)  # (bins + 2,)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (bins, 1)
    mel = _mel(fft_freqs)[None, :]  # (1, half)
    rising, falling = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (bins, half)
    # Kaldi's filters never reach the Nyquist bin: a zero column keeps the 257-bin layout.
    return torch.cat([banks, torch.zeros(config.mel_bins, 1, dtype=torch.float64)], dim=1).T


def frame_to_spectrum_basis(config: FbankConfig) -> torch.Tensor:
    """(2 * (n_fft // 2 + 1), 1, frame_length) float64: frame samples -> [real; imag] spectrum.

    Composes DC removal, pre-emphasis (first sample against itself, as Kaldi does), the povey
    window and the zero-padded DFT into one linear map.
    """
    n = config.frame_length
    eye = torch.eye(n, dtype=torch.float64)
    remove_dc = eye - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    previous = torch.diag(torch.ones(n - 1, dtype=torch.float64), -1)
    previous[0, 0] = 1.0  # x[-1] := x[0]
    preemphasis = eye - config.preemphasis * previous
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(n, dtype=torch.float64) / (n - 1))
    windowed = torch.diag(hann.pow(config.window_power)) @ preemphasis @ remove_dc  # (n, n)
    bins = torch.arange(config.n_fft // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * bins[:, None] * torch.arange(n, dtype=torch.float64)[None, :] / config.n_fft
    dft = torch.cat([torch.cos(angle), -torch.sin(angle)])  # (2 * bins, n)
    return (dft @ windowed).unsqueeze(1)


class FoFrontend(StreamingModule):
    """Fbank + CMVN with its sample and frame carries as explicit state."""

    def __init__(self, config: FbankConfig = FbankConfig()):
        super().__init__()
        self.config = config
        self.chunk_size = config.chunk_samples
        self.register_buffer("spectrum_basis", frame_to_spectrum_basis(config).float(), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(config).float(), persistent=False)
        # Global CMVN statistics: weights, loaded from the checkpoint (or computed from global_cmvn).
        self.register_buffer("cmvn_mean", torch.zeros(config.mel_bins))
        self.register_buffer("cmvn_istd", torch.ones(config.mel_bins))

    def set_compute_dtype(self, dtype: torch.dtype) -> "FoFrontend":
        # Power spectra of int16-range audio reach ~1e14, far past fp16: the front end stays float32.
        return self

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("chunk", ("batch", self.config.chunk_samples)),)

    def output_names(self) -> tuple[str, ...]:
        return ("feats",)

    def state_specs(self) -> tuple[StateSpec, ...]:
        c = self.config
        return (StateSpec("samples", (1, c.carry_samples)), StateSpec("frames", (1, c.overlap_frames, c.mel_bins)))

    def log_mel(self, samples: torch.Tensor) -> torch.Tensor:
        """Raw Kaldi log-mel of scaled samples (B, N) -> (B, frames, mel_bins), snip_edges framing."""
        spectrum = nn.functional.conv1d(samples.unsqueeze(1), self.spectrum_basis, stride=self.config.frame_shift)
        half = spectrum.shape[1] // 2
        power = spectrum[:, :half].square() + spectrum[:, half:].square()  # (B, bins, frames)
        energies = torch.matmul(power.transpose(1, 2), self.mel_banks)  # (B, frames, mel_bins)
        return torch.clamp(energies, min=torch.finfo(torch.float32).eps).log()

    def normalize(self, fbank: torch.Tensor) -> torch.Tensor:
        return (fbank - self.cmvn_mean) * self.cmvn_istd

    def raw_step(self, chunk: torch.Tensor, samples: torch.Tensor, frames: torch.Tensor):
        """The step before CMVN: raw fbank (B, 19, 80) and the new carries (what the reference emits)."""
        # chunk: (B, 2560) in [-1, 1]; samples: (B, 240) scaled; frames: (B, 3, 80) raw log-mel
        window = torch.cat([samples, chunk * self.config.sample_scale], dim=1)  # (B, 2800)
        new = self.log_mel(window)  # (B, 16, 80)
        fbank = torch.cat([frames, new], dim=1)  # (B, 19, 80)
        c = self.config
        return fbank, window[:, -c.carry_samples :], fbank[:, -c.overlap_frames :]

    def step(self, chunk: torch.Tensor, samples: torch.Tensor, frames: torch.Tensor):  # type: ignore[override]
        fbank, samples, frames = self.raw_step(chunk, samples, frames)
        return self.normalize(fbank), samples, frames

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Whole-signal call: (B, N * 2560) -> CMVN'd frames (B, 3 + 16 N, 80), from zero state.

        The zero carries become 240 leading zero samples and 3 leading raw-zero frames; the
        chunked step must equal this.
        """
        c = self.config
        padded = torch.cat([audio.new_zeros(audio.shape[0], c.carry_samples), audio * c.sample_scale], dim=1)
        frames = torch.cat([audio.new_zeros(audio.shape[0], c.overlap_frames, c.mel_bins), self.log_mel(padded)], dim=1)
        return self.normalize(frames)
