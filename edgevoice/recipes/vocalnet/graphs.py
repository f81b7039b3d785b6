"""Export views of VocalNet's vocoder side: the flow and HiFT modules as pure, fixed-rank steps.

The models (``edgevoice.models.vocalnet.flow`` / ``hift``) run batch 1 the way the reference does;
these views give each exported graph named inputs, a batch dim and dynamic lengths:

    flow_encoder  tokens (B, N) int64, speaker_embedding (B, S)  ->  mu (B, 80, 2N), spks (B, 80)
    flow_step     x, mu, cond (B, 80, T), spks (B, 80), t, dt (B,)  ->  x + dt * v
                  (v = (1 + r) * est(x, mu, spks, cond) - r * est(x, 0, 0, 0): the CFG pair is
                  built inside, so the host sees one row per session)
    hift_source   mel (B, 80, F), phase (B, H), noise (B, H, F, P)  ->  f0 (B, F), source (B, 1, F, P)
    hift_decode   mel (B, 80, F), source (B, 1, F, P)  ->  audio (B, F, P)

Audio-rate tensors carry the frame axis and the samples of a frame (P = 480 at 24 kHz) as two
dims, so the only dynamic length is F: TensorRT profiles and torch.export see one symbol, not an
unconstrained sample count that must equal 480 F.
"""

from __future__ import annotations

import torch

from edgevoice.models.vocalnet.flow import FlowModel
from edgevoice.models.vocalnet.hift import HiftGenerator
from edgevoice.streaming import InputSpec, StateSpec, StreamingModule


class _Stateless(StreamingModule):
    """A step without state."""

    def state_specs(self) -> tuple[StateSpec, ...]:
        return ()


class FlowEncoderStep(_Stateless):
    """Prompt + reply tokens -> the flow's conditioning ``mu`` and the speaker vector ``spks``."""

    def __init__(self, flow: FlowModel, max_tokens: int):
        super().__init__()
        self.flow, self.max_tokens = flow, max_tokens

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("tokens", ("batch", "tokens"), torch.int64),
                InputSpec("speaker_embedding", ("batch", self.flow.cfg.spk_embed_dim)))

    def output_names(self) -> tuple[str, ...]:
        return ("mu", "spks")

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        return {"tokens": (1, min(120, self.max_tokens), self.max_tokens)}

    def step(self, tokens, speaker_embedding):  # type: ignore[override]
        # tokens: (B, N) int64; speaker_embedding: (B, S) -> mu (B, 80, 2N), spks (B, 80) float32
        mu = self.flow.encode(tokens)
        spks = self.flow.speaker(speaker_embedding.to(self.compute_dtype))
        return mu.float(), spks.float()


class FlowEulerStep(_Stateless):
    """One classifier-free-guided Euler step of the flow matching."""

    def __init__(self, flow: FlowModel, max_frames: int):
        super().__init__()
        self.estimator = flow.decoder.estimator
        self.cfg_rate, self.mel_bins, self.max_frames = flow.cfg.cfg_rate, flow.cfg.mel_bins, max_frames

    def input_specs(self) -> tuple[InputSpec, ...]:
        frames = ("batch", self.mel_bins, "frames")
        return (InputSpec("x", frames), InputSpec("mu", frames), InputSpec("spks", ("batch", self.mel_bins)),
                InputSpec("cond", frames), InputSpec("t", ("batch",)), InputSpec("dt", ("batch",)))

    def output_names(self) -> tuple[str, ...]:
        return ("x_next",)

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        return {"frames": (2, min(240, self.max_frames), self.max_frames)}

    def step(self, x, mu, spks, cond, t, dt):  # type: ignore[override]
        # x, mu, cond: (B, 80, T); spks: (B, 80); t, dt: (B,) -> x_next (B, 80, T)
        dtype, b = self.compute_dtype, x.shape[0]
        x_in = torch.cat([x, x]).to(dtype)  # rows 0..B-1 conditioned, B..2B-1 unconditioned
        mask = torch.ones_like(x_in[:, :1])
        mu_in = torch.cat([mu, torch.zeros_like(mu)]).to(dtype)
        spks_in = torch.cat([spks, torch.zeros_like(spks)]).to(dtype)
        cond_in = torch.cat([cond, torch.zeros_like(cond)]).to(dtype)
        pair = self.estimator(x_in, mask, mu_in, torch.cat([t, t]).to(dtype), spks_in, cond_in).float()
        velocity = (1.0 + self.cfg_rate) * pair[:b] - self.cfg_rate * pair[b:]
        return (x + dt.view(-1, 1, 1) * velocity,)


class HiftSourceGraph(_Stateless):
    """mel -> F0 and the harmonic excitation; the random phases and noise come from the host."""

    def __init__(self, hift: HiftGenerator, max_frames: int):
        super().__init__()
        self.f0_predictor, self.m_source = hift.f0_predictor, hift.m_source
        self.config, self.max_frames = hift.config, max_frames

    def set_compute_dtype(self, dtype: torch.dtype) -> HiftSourceGraph:
        # F0 drives a running phase sum over thousands of samples: fp16 would detune it. It is small.
        self.compute_dtype = torch.float32
        return self

    def input_specs(self) -> tuple[InputSpec, ...]:
        c = self.config
        return (InputSpec("mel", ("batch", c.in_channels, "frames")), InputSpec("phase", ("batch", c.harmonics)),
                InputSpec("noise", ("batch", c.harmonics, "frames", c.samples_per_frame)))

    def output_names(self) -> tuple[str, ...]:
        return ("f0", "source")

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        return {"frames": (2, min(32, self.max_frames), self.max_frames)}

    def step(self, mel, phase, noise):  # type: ignore[override]
        b, h, f, p = noise.shape
        f0 = self.f0_predictor(mel)  # (B, F)
        source = self.m_source(f0, phase, noise.reshape(b, h, f * p))  # (B, 1, F*P)
        return f0, source.reshape(b, 1, f, p)


class HiftDecodeGraph(_Stateless):
    """mel + excitation -> 24 kHz audio (clamped), iSTFT as a transposed convolution."""

    def __init__(self, hift: HiftGenerator, max_frames: int):
        super().__init__()
        self.generator, self.max_frames = hift, max_frames

    def set_compute_dtype(self, dtype: torch.dtype) -> HiftDecodeGraph:
        # exp(log-magnitude) and the iSTFT's overlap-add divide: kept float32 (the vocoder is ~20 M params).
        self.compute_dtype = torch.float32
        return self

    def input_specs(self) -> tuple[InputSpec, ...]:
        c = self.generator.config
        return (InputSpec("mel", ("batch", c.in_channels, "frames")),
                InputSpec("source", ("batch", 1, "frames", c.samples_per_frame)))

    def output_names(self) -> tuple[str, ...]:
        return ("audio",)

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        return {"frames": (2, min(32, self.max_frames), self.max_frames)}

    def step(self, mel, source):  # type: ignore[override]
        b, _, f, p = source.shape
        audio = self.generator.decode(mel, source.reshape(b, 1, f * p))  # (B, F*P)
        return (audio.reshape(b, f, p),)
