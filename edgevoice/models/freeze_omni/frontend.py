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
DFT) is linear, so it is a fixed basis computed in float64 and applied as a strided Conv1d: no FFT
op (TensorRT 10.3 has none), no framing gather, nothing but float32 in the graph. The basis comes
in two exactly equivalent forms with different float32 rounding (``spectrum_bases``); each
spectrum row comes from the better conditioned one per frame, which keeps weak bins next to strong
ones within ~3e-4 log units of the float64 result (the reference's own float32 pipeline,
torchaudio's ``kaldi.fbank``, and kaldi-native-fbank are each up to ~1e-2 off it on speech: see
tests/models/freeze_omni/test_frontend_kaldi.py).
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


def _povey_dft(config: FbankConfig) -> torch.Tensor:
    """(2 * (n_fft // 2 + 1), frame_length) float64: povey-windowed, zero-padded DFT rows [real; imag]."""
    n = config.frame_length
    taps = torch.arange(n, dtype=torch.float64)
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * taps / (n - 1))
    bins = torch.arange(config.n_fft // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * bins[:, None] * taps[None, :] / config.n_fft  # (bins, n)
    return torch.cat([torch.cos(angle), -torch.sin(angle)]) * hann.pow(config.window_power)


def spectrum_bases(config: FbankConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Two exact float64 routes from a frame to its [real; imag] spectrum, as Conv1d weights.

    Returns ``basis`` (2 * rows, 2, frame_length) over the input channels [first difference, samples],
    rows = 2 * (n_fft // 2 + 1) = 514 per route, and ``norms`` (3, rows): the weight norms of the
    direct route, the differenced route's difference part and its sample part, which scale each
    route's float32 rounding.

    Route "direct" (rows 0..rows-1) reads only the samples: DC removal, pre-emphasis (first sample
    against itself, as Kaldi does), window and DFT composed into one map. Route "differenced"
    rewrites pre-emphasis as ``y[i] = (x[i] - x[i-1]) + (1 - a) (x[i-1] - mean)``: the first
    difference (exact in float32 for int16-range samples) goes through the plain windowed DFT and
    only the ``1 - a = 0.03`` share still sees the raw samples. Both are the same linear map in
    exact arithmetic; they differ in which float32 errors they make (see ``FoFrontend.spectrum``).
    """
    n, a = config.frame_length, config.preemphasis
    eye = torch.eye(n, dtype=torch.float64)
    remove_dc = eye - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    previous = torch.diag(torch.ones(n - 1, dtype=torch.float64), -1)
    previous[0, 0] = 1.0  # x[-1] := x[0]: the frame's first difference is 0
    dft = _povey_dft(config)  # (rows, n)
    direct = dft @ (eye - a * previous) @ remove_dc
    of_difference = dft.clone()
    of_difference[:, 0] = 0.0  # the first sample's difference with itself
    of_samples = (1.0 - a) * (dft @ previous @ remove_dc)
    zeros = torch.zeros_like(dft)
    basis = torch.cat([torch.stack([zeros, direct], 1), torch.stack([of_difference, of_samples], 1)])
    norms = torch.stack([direct.norm(dim=1), of_difference.norm(dim=1), of_samples.norm(dim=1)])
    return basis, norms


class FoFrontend(StreamingModule):
    """Fbank + CMVN with its sample and frame carries as explicit state."""

    def __init__(self, config: FbankConfig = FbankConfig()):
        super().__init__()
        self.config = config
        self.chunk_size = config.chunk_samples
        basis, norms = spectrum_bases(config)
        self.register_buffer("spectrum_basis", basis.float(), persistent=False)  # (2 * rows, 2, 400)
        self.register_buffer("route_norms", norms.float()[:, None, :, None], persistent=False)  # (3, 1, rows, 1)
        # Summed squares per frame of each input channel, for the rounding estimates.
        self.register_buffer("frame_sum", torch.eye(2)[:, :, None].expand(2, 2, config.frame_length).clone(), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(config).float(), persistent=False)
        # Global CMVN statistics: weights, loaded from the checkpoint (or computed from global_cmvn).
        self.register_buffer("cmvn_mean", torch.zeros(config.mel_bins))
        self.register_buffer("cmvn_istd", torch.ones(config.mel_bins))

    def set_compute_dtype(self, dtype: torch.dtype) -> FoFrontend:
        # Power spectra of int16-range audio reach ~1e14, far past fp16: the front end stays float32.
        return self

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("chunk", ("batch", self.config.chunk_samples)),)

    def output_names(self) -> tuple[str, ...]:
        return ("feats",)

    def state_specs(self) -> tuple[StateSpec, ...]:
        c = self.config
        return (StateSpec("samples", (1, c.carry_samples)), StateSpec("frames", (1, c.overlap_frames, c.mel_bins)))

    def spectrum(self, samples: torch.Tensor) -> torch.Tensor:
        """[real; imag] spectra (B, rows, frames) of scaled samples (B, N), snip_edges framing.

        In float32 a spectrum row's rounding error scales with (input norm) x (weight norm), not
        with the row's value, so a weak bin next to strong ones (speech's low-energy mid and high
        bins, the skirts of a tone) loses digits. Each row is computed by both exact routes of
        ``spectrum_bases`` and taken from the one whose estimated error is smaller for this frame:
        the direct route wins where the first difference is large (high-frequency content), the
        differenced one where the samples are dominated by low frequencies (voiced speech, hum).
        """
        c = self.config
        first_difference = torch.cat([torch.zeros_like(samples[:, :1]), samples[:, 1:] - samples[:, :-1]], dim=1)  # (B, N)
        channels = torch.stack([first_difference, samples], dim=1)  # (B, 2, N)
        both = nn.functional.conv1d(channels, self.spectrum_basis, stride=c.frame_shift)  # (B, 2 * rows, F)
        rows = both.shape[1] // 2
        direct, differenced = both[:, :rows], both[:, rows:]
        energy = nn.functional.conv1d(channels.square(), self.frame_sum, stride=c.frame_shift)  # (B, 2, F)
        difference_norm, sample_norm = energy[:, :1].sqrt(), energy[:, 1:].sqrt()  # (B, 1, F) each
        direct_error = sample_norm * self.route_norms[0]  # (B, rows, F)
        differenced_error = difference_norm * self.route_norms[1] + sample_norm * self.route_norms[2]
        return torch.where(differenced_error < direct_error, differenced, direct)

    def log_mel(self, samples: torch.Tensor) -> torch.Tensor:
        """Raw Kaldi log-mel of scaled samples (B, N) -> (B, frames, mel_bins), snip_edges framing."""
        spectrum = self.spectrum(samples)  # (B, 2 * bins, frames)
        half = spectrum.shape[1] // 2
        power = spectrum[:, :half].square() + spectrum[:, half:].square()  # (B, bins, frames)
        energies = torch.matmul(power.transpose(1, 2), self.mel_banks)  # (B, frames, mel_bins)
        # Kaldi floors at float32 epsilon before the log (max, not an added offset).
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
