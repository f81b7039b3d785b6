"""CosyVoice2 flow for VocalNet: speech tokens + prompt + speaker embedding -> 80-bin mel.

Reference: ``CausalMaskedDiffWithXvec.inference`` and ``CausalConditionalCFM`` in VocalNet's bundled
``cosyvoice/flow/flow.py`` / ``flow_matching.py``, driven by ``CosyVoice2Model.token2wav`` /
``tts_direct_update`` (``cosyvoice/cli/model.py``) from ``omni_speech/infer/vocalnet[_streaming].py``.

One flow call, for new tokens ``u`` (N) after the prompt tokens ``p`` (P) with prompt mel (2P frames):

1. spks = Linear(normalize(embedding))                                   [1, 80]
2. mu = encoder_proj(encoder(embed([p | u])))                            [1, 80, 2(P+N)]
   (not finalizing: the last pre_lookahead*2 frames are dropped - they saw zero padding for
   tokens that have not arrived)
3. x = noise[:, :, :T]; cond = prompt mel in the first 2P frames, 0 after
4. 10 Euler steps on the cosine schedule t = 1 - cos(pi/2 * k/10); at each step the estimator runs
   on a batch of 2 - (x, mu, t, spks, cond) and (x, 0, t, 0, 0) - and v = 1.7*v_cond - 0.7*v_uncond
5. mel = x[:, :, 2P:]

Export form: the encoder is one graph (``FlowEncoderGraph``: tokens, embedding -> mu, spks) and one
Euler step is another (``EulerStepGraph``: x, mu, spks, cond, t, dt -> next x, the CFG pair built
inside). The 10-step loop stays on the host: one engine serves any step count, the graph has a
tenth of the nodes of an unrolled one (TensorRT build time and builder memory on a Jetson), and x
is a plain ping-pong buffer between calls; ``t``/``dt`` follow the reference's float32 recurrence
(``euler_schedule``). The CFG pair (batch 2) is built inside the step, so the host sees batch 1.
The noise comes from the host so that runs are deterministic and match the reference's fixed
``rand_noise`` prefix.

Streaming (``FlowStreamer``, as ``tts_direct_update(stream=True)`` runs it): tokens accumulate; the
flow has no state of its own. Every call re-encodes the prompt plus the whole token prefix and
re-runs the CFM with the same noise prefix, so earlier frames are recomputed, then only frames
from ``token_offset*2`` on are kept. A non-final chunk triggers at most one call, when at least 15
tokens lie past the offset: flow on ``tokens[:offset+15]`` with finalize=False (24 new frames kept),
then offset += 12. The final chunk calls the flow while at least token_hop (2*input_frame_rate=50)
+ pre_lookahead (3) tokens lie past the offset (offset += 50), then once with finalize=True on all
tokens. The overlap between calls is the 3 look-ahead tokens (6 frames) that a non-final call drops
and the next one recomputes; the 8-frame mel cache and source/speech cross-fade belong to HiFT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edgevoice.errors import EdgevoiceError
from edgevoice.models.vocalnet.flow_encoder import FlowEncoder, FlowEncoderConfig
from edgevoice.models.vocalnet.flow_estimator import Estimator, EstimatorConfig


@dataclass(frozen=True)
class FlowConfig:
    vocab_size: int = 6561
    mel_bins: int = 80  # output_size
    spk_embed_dim: int = 192
    input_frame_rate: int = 25
    token_mel_ratio: int = 2
    pre_lookahead: int = 3
    n_timesteps: int = 10  # hard-coded in CausalMaskedDiffWithXvec.inference
    cfg_rate: float = 0.7  # inference_cfg_rate
    t_scheduler: str = "cosine"
    encoder: FlowEncoderConfig = field(default_factory=FlowEncoderConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)


class FlowMatching(nn.Module):
    """Holds the estimator under the checkpoint's name (``decoder.estimator``) and the CFG step."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg_rate = cfg.cfg_rate
        self.estimator = Estimator(cfg.estimator)

    def velocity(self, x, mu, spks, cond, t) -> torch.Tensor:
        """Guided velocity [1, 80, T] for x/mu/cond [1, 80, T], spks [1, 80], t [1]."""
        return self.guided(self.estimator_pair(x, mu, spks, cond, t))

    def estimator_pair(self, x, mu, spks, cond, t) -> torch.Tensor:
        """Raw estimator output [2, 80, T]: row 0 conditioned, row 1 with mu/spks/cond zeroed."""
        x_in = torch.cat([x, x], dim=0)
        mask = torch.ones_like(x_in[:, :1])  # [2, 1, T]: batch 1 is never padded
        mu_in = torch.cat([mu, torch.zeros_like(mu)], dim=0)
        spks_in = torch.cat([spks, torch.zeros_like(spks)], dim=0)
        cond_in = torch.cat([cond, torch.zeros_like(cond)], dim=0)
        return self.estimator(x_in, mask, mu_in, t.expand(2), spks_in, cond_in)

    def guided(self, pair: torch.Tensor) -> torch.Tensor:
        return (1.0 + self.cfg_rate) * pair[:1] - self.cfg_rate * pair[1:]


def euler_schedule(n_timesteps: int, scheduler: str = "cosine") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(t, dt) per step as float32 [1] tensors, by the reference's recurrence t += dt, dt = t_k+1 - t."""
    span = torch.linspace(0, 1, n_timesteps + 1, dtype=torch.float32)
    if scheduler == "cosine":
        span = 1 - torch.cos(span * 0.5 * torch.pi)
    elif scheduler != "linear":
        raise EdgevoiceError(f"flow t_scheduler {scheduler!r} is not supported (cosine or linear)")
    t, dt = span[0].reshape(1), (span[1] - span[0]).reshape(1)
    steps = []
    for k in range(1, n_timesteps + 1):
        steps.append((t, dt))
        t = t + dt
        if k < n_timesteps:
            dt = span[k + 1] - t
    return steps


class FlowModel(nn.Module):
    """CausalMaskedDiffWithXvec at inference; parameter names match ``flow.pt``."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        width = cfg.encoder.width
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.encoder.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.mel_bins)
        self.encoder = FlowEncoder(cfg.encoder)
        self.encoder_proj = nn.Linear(width, cfg.mel_bins)
        self.decoder = FlowMatching(cfg)

    def speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        """[1, spk_embed_dim] -> [1, 80]."""
        return self.spk_embed_affine_layer(F.normalize(embedding, dim=1))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """[1, P+N] token ids (prompt first) -> mu [1, 80, ratio*(P+N)], look-ahead frames included."""
        h = self.encoder(self.input_embedding(tokens.clamp(min=0)))
        return self.encoder_proj(h).transpose(1, 2)

    @torch.no_grad()
    def inference(self, tokens, prompt_tokens, prompt_feat, embedding, noise, finalize: bool = True):
        """New mel [1, 80, frames] for ``tokens`` [1, N] after ``prompt_tokens`` [1, P].

        prompt_feat [1, 2P, 80]; embedding [1, 192]; noise [1, 80, >= T] (its prefix is used).
        Also returns the conditioning ``(mu, spks, cond)`` for inspection.
        """
        spks = self.speaker(embedding)
        mu = self.encode(torch.cat([prompt_tokens, tokens], dim=1))
        if not finalize:
            mu = mu[:, :, : mu.shape[2] - self.cfg.pre_lookahead * self.cfg.token_mel_ratio]
        frames, prompt_frames = mu.shape[2], prompt_feat.shape[1]
        if noise.shape[2] < frames:
            raise EdgevoiceError(f"flow noise has {noise.shape[2]} frames but {frames} are needed; supply a longer noise")
        cond = torch.zeros_like(mu)
        cond[:, :, :prompt_frames] = prompt_feat.transpose(1, 2)
        x = noise[:, :, :frames]
        for t, dt in euler_schedule(self.cfg.n_timesteps, self.cfg.t_scheduler):
            x = x + dt * self.decoder.velocity(x, mu, spks, cond, t)
        return x[:, :, prompt_frames:], (mu, spks, cond)


class FlowEncoderGraph(nn.Module):
    """Export form of the encoder side: (tokens [1, P+N] int64, embedding [1, 192]) -> (mu, spks)."""

    def __init__(self, flow: FlowModel):
        super().__init__()
        self.flow = flow

    def forward(self, tokens: torch.Tensor, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow.encode(tokens), self.flow.speaker(embedding)


class EulerStepGraph(nn.Module):
    """Export form of one CFG Euler step: (x, mu, spks, cond, t [1], dt [1]) -> x + dt * v."""

    def __init__(self, flow: FlowModel):
        super().__init__()
        self.matching = flow.decoder

    def forward(self, x, mu, spks, cond, t, dt) -> torch.Tensor:
        return x + dt * self.matching.velocity(x, mu, spks, cond, t)


@dataclass(frozen=True)
class FlowCall:
    """One streaming flow call: what it saw and what it produced."""

    n_tokens: int  # tokens encoded after the prompt
    token_offset: int  # tokens already turned into mel by earlier calls
    finalize: bool
    mel: torch.Tensor  # [1, 80, frames] everything the flow produced after the prompt
    new_mel: torch.Tensor  # [1, 80, frames - offset*ratio] the part handed on to the vocoder


@dataclass(frozen=True)
class StreamSchedule:
    """Hop sizes of ``tts_direct_update`` (the reference hard-codes 15 and 12 for non-final chunks)."""

    chunk_tokens: int = 15  # tokens past the offset that trigger a non-final call
    chunk_advance: int = 12  # offset advance after a non-final call
    final_hop: int = 50  # token_hop_len = 2 * input_frame_rate, used while draining the last chunk


class FlowStreamer:
    """Host-side streaming driver over ``FlowModel.inference``; see the module docstring."""

    def __init__(self, flow: FlowModel, prompt_tokens, prompt_feat, embedding, noise, schedule: StreamSchedule | None = None):
        self.flow, self.noise = flow, noise
        self.prompt = (prompt_tokens, prompt_feat, embedding)
        self.schedule = schedule or StreamSchedule(final_hop=2 * flow.cfg.input_frame_rate)
        self.tokens: list[int] = []
        self.offset = 0

    def _call(self, n_tokens: int, finalize: bool) -> FlowCall:
        tokens = torch.tensor([self.tokens[:n_tokens]], dtype=torch.long)
        mel, _ = self.flow.inference(tokens, *self.prompt, self.noise, finalize=finalize)
        keep = mel[:, :, self.offset * self.flow.cfg.token_mel_ratio :]
        return FlowCall(n_tokens, self.offset, finalize, mel, keep)

    def push(self, units: list[int], is_last: bool) -> list[FlowCall]:
        """Add a chunk of speech units; the flow calls the reference would make for it."""
        self.tokens.extend(int(u) for u in units)
        sched, calls = self.schedule, []
        if not is_last:
            if len(self.tokens) - self.offset >= sched.chunk_tokens:
                calls.append(self._call(self.offset + sched.chunk_tokens, finalize=False))
                self.offset += sched.chunk_advance
            return calls
        needed = sched.final_hop + self.flow.cfg.pre_lookahead
        while len(self.tokens) - self.offset >= needed:
            calls.append(self._call(self.offset + needed, finalize=False))
            self.offset += sched.final_hop
        calls.append(self._call(len(self.tokens), finalize=True))
        self.offset = len(self.tokens)
        return calls
