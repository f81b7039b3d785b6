"""Freeze-Omni's codec decoder (TiCodec's HiFi-GAN generator): codec tokens -> 24 kHz PCM.

One call decodes a window of tokens (40 Hz) into ``hop`` samples per token:

    codebook lookup (B, T) -> (B, code_dim, T)
    conv_pre (k7)
    per upsampling stage: LeakyReLU 0.1 -> ConvTranspose1d -> mean of the MRF resblocks
                          (+ the global vector, broadcast over time, after the stage whose
                          channel count equals its width)
    LeakyReLU 0.1 -> conv_post (k7, one channel) -> tanh

The global vector comes from fixed "global tokens" looked up in eight small codebooks; the
reference always passes the same tokens, so the loader folds it into a constant here. Weight
norm is folded at load as well (``w = g * v / |v|``), so the graph is plain Conv/ConvTranspose.

The convolutions are non-causal ("same" padding): the codec is stateless per call, and the
host decodes overlapping windows and trims them (``edgevoice.runtime.freeze_omni.speech_tokens``), exactly
as the reference does. The exported graph is

    codec: step(tokens (B, T) int64) -> (pcm (B, T * hop) float32)      T in 1..max_tokens
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgevoice.streaming import InputSpec, StateSpec, StreamingModule

LEAKY_SLOPE = 0.1  # every LeakyReLU of the generator, the last one included


@dataclass(frozen=True)
class FoCodecConfig:
    """Shape of the codec decoder. Defaults are the published Freeze-Omni codec."""

    n_codes: int = 1024  # codebook rows (token ids 0..n_codes-1)
    code_dim: int = 512  # codebook vector width = conv_pre input channels
    initial_channels: int = 512  # conv_pre output channels; halved by every upsampling stage
    upsample_rates: tuple[int, ...] = (8, 5, 5, 3)  # strides; their product is the hop
    upsample_kernels: tuple[int, ...] = (16, 11, 11, 5)  # ConvTranspose1d kernel per stage
    resblock_kernels: tuple[int, ...] = (3, 7, 11)  # MRF: one resblock per kernel, every stage
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))  # per resblock
    global_dim: int = 128  # width of the folded global vector
    sample_rate: int = 24000  # Hz of the PCM out
    max_tokens: int = 60  # largest window one call takes (left context + chunk + look-ahead)

    def __post_init__(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernels):
            raise ValueError(f"{len(self.upsample_rates)} upsample rates but {len(self.upsample_kernels)} kernels")
        if len(self.resblock_kernels) != len(self.resblock_dilations):
            raise ValueError(f"{len(self.resblock_kernels)} resblock kernels but {len(self.resblock_dilations)} dilation sets")
        if self.initial_channels % 2 ** len(self.upsample_rates):
            raise ValueError(f"initial_channels={self.initial_channels} cannot be halved {len(self.upsample_rates)} times")
        if self.global_dim not in self.stage_channels:
            # The reference silently skips the global vector then; a codec without it was not trained so.
            raise ValueError(f"no upsampling stage has {self.global_dim} channels {self.stage_channels}; the global vector would be dropped")

    @property
    def hop(self) -> int:  # output samples per token
        return math.prod(self.upsample_rates)

    @property
    def stage_channels(self) -> tuple[int, ...]:  # channels after each upsampling stage
        return tuple(self.initial_channels // 2 ** (i + 1) for i in range(len(self.upsample_rates)))


def _same_padding(kernel: int, dilation: int) -> int:
    return (kernel * dilation - dilation) // 2


class MrfResBlock(nn.Module):
    """HiFi-GAN resblock type 1: per dilation, LReLU -> dilated conv -> LReLU -> conv, residual."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=_same_padding(kernel, d)) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=_same_padding(kernel, 1)) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, L) -> (B, C, L)
        for dilated, plain in zip(self.convs1, self.convs2):
            x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, LEAKY_SLOPE)), LEAKY_SLOPE))
        return x


class FoCodecDecoder(StreamingModule):
    """The generator with folded weights; parameter names follow ``codec/final.pt``'s generator."""

    def __init__(self, config: FoCodecConfig = FoCodecConfig()):
        super().__init__()
        self.config = config
        c = config
        self.codebook = nn.Embedding(c.n_codes, c.code_dim)
        # Persistent so the strict loader insists on it: it is the folded global-token lookup.
        self.register_buffer("global_vector", torch.zeros(c.global_dim))
        self.conv_pre = nn.Conv1d(c.code_dim, c.initial_channels, 7, padding=3)
        channels_in = (c.initial_channels, *c.stage_channels[:-1])
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(cin, cout, k, u, padding=(k - u) // 2)
            for cin, cout, u, k in zip(channels_in, c.stage_channels, c.upsample_rates, c.upsample_kernels)
        )
        self.resblocks = nn.ModuleList(
            MrfResBlock(ch, k, tuple(d)) for ch in c.stage_channels for k, d in zip(c.resblock_kernels, c.resblock_dilations)
        )
        self.conv_post = nn.Conv1d(c.stage_channels[-1], 1, 7, padding=3)

    def state_specs(self) -> tuple[StateSpec, ...]:
        return ()  # stateless: the host overlaps windows instead

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("tokens", ("batch", "tokens"), torch.int64),)

    def output_names(self) -> tuple[str, ...]:
        return ("pcm",)

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        top = self.config.max_tokens
        return {"tokens": (1, top, top)}

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor]:  # type: ignore[override]
        return (self(tokens),)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) int64 -> pcm (B, T * hop) float32 in [-1, 1]."""
        x = self.codebook(tokens).transpose(1, 2)  # (B, code_dim, T)
        x = self.conv_pre(x)
        kernels = len(self.config.resblock_kernels)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LEAKY_SLOPE))
            blocks = self.resblocks[i * kernels : (i + 1) * kernels]
            x = sum(block(x) for block in blocks) / kernels
            if x.shape[1] == self.config.global_dim:
                x = x + self.global_vector.to(x.dtype).view(1, -1, 1)
        x = self.conv_post(F.leaky_relu(x, LEAKY_SLOPE))
        return torch.tanh(x).squeeze(1).float()  # (B, T * hop)
