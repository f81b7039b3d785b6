"""Freeze-Omni's adapter: encoder frames (25 Hz) -> LLM input embeddings (12.5 Hz).

Causal Conv1d(d -> conv_channels, k5, s2) over the encoder frames left-padded by 4, then
LayerNorm (eps 1e-3; the checkpoint calls it ``bn2``), GELU and Linear(conv_channels -> llm
hidden). Between steps it keeps the last ``kernel - 1`` = 4 frames of its padded input as a conv
cache (the reference's choice; with 4 new frames per step that makes consecutive strided windows
line up exactly as one conv over the whole turn). Zeros at the start of a turn equal its zero
left pad:

    step(encoded (B, 4, d), conv_cache (B, d, 4)) -> (embeds (B, 2, hidden), conv_cache')
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.streaming import InputSpec, StateSpec, StreamingModule


@dataclass(frozen=True)
class FoAdapterConfig:
    """Shape of the adapter. Defaults are the published Freeze-Omni sizes."""

    in_dim: int = 1024  # encoder width
    conv_channels: int = 2048  # Conv1d output channels (2 x encoder width in the reference)
    out_dim: int = 3584  # LLM hidden size
    kernel: int = 5  # Conv1d kernel
    stride: int = 2  # Conv1d stride: halves the frame rate
    chunk_frames: int = 4  # encoder frames per step
    norm_eps: float = 1e-3  # the reference's LayerNorm epsilon

    def __post_init__(self) -> None:
        if self.chunk_frames % self.stride:
            raise ValueError(f"chunk_frames={self.chunk_frames} must be a multiple of stride={self.stride}")

    @property
    def cache_frames(self) -> int:  # left context kept between steps (= causal left pad)
        return self.kernel - 1

    @property
    def out_frames(self) -> int:  # embeddings per step
        return self.chunk_frames // self.stride


class FoAdapter(StreamingModule):
    """The adapter with its conv cache as explicit state; names match the checkpoint after ``adpter.``."""

    def __init__(self, config: FoAdapterConfig = FoAdapterConfig()):
        super().__init__()
        self.config = config
        self.chunk_size = config.chunk_frames
        self.conv = nn.Conv1d(config.in_dim, config.conv_channels, config.kernel, config.stride)
        self.norm = nn.LayerNorm(config.conv_channels, eps=config.norm_eps)
        self.project = nn.Linear(config.conv_channels, config.out_dim)

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("encoded", ("batch", self.config.chunk_frames, self.config.in_dim)),)

    def output_names(self) -> tuple[str, ...]:
        return ("embeds",)

    def state_specs(self) -> tuple[StateSpec, ...]:
        c = self.config
        return (StateSpec("conv_cache", (1, c.in_dim, c.cache_frames), 0, self.compute_dtype),)

    def head(self, padded: torch.Tensor) -> torch.Tensor:
        # padded: (B, d, cache + T) channels-first -> (B, (cache + T - kernel) // stride + 1, hidden)
        x = self.conv(padded).transpose(1, 2)
        return self.project(nn.functional.gelu(self.norm(x)))

    def step(self, encoded: torch.Tensor, conv_cache: torch.Tensor):  # type: ignore[override]
        # encoded: (B, 4, d); conv_cache: (B, d, 4)
        padded = torch.cat([conv_cache, encoded.to(conv_cache.dtype).transpose(1, 2)], dim=2)  # (B, d, 8)
        embeds = self.head(padded.to(self.compute_dtype)).float()  # (B, 2, hidden)
        return embeds, padded[:, :, -self.config.cache_frames :]

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        """Whole-sequence call: (B, T, d) -> (B, T // 2, hidden) with the zero left pad."""
        x = encoded.to(self.compute_dtype).transpose(1, 2)
        padded = nn.functional.pad(x, (self.config.cache_frames, 0))
        return self.head(padded)[:, : encoded.shape[1] // self.config.stride].float()
