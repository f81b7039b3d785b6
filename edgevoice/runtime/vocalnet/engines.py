"""VocalNet's engines as the host loops see them: numpy in, numpy out, any backend's runners.

* ``DecoderEngines``: ``speech_text`` and ``speech_units`` over one state set (the two graphs
  take and return the same cache tensors), as ``speech_tokens.MtpDecoderGraphs``;
* ``HiftEngines``: ``hift_source`` and ``hift_decode`` as ``vocoder_stream.HiftGraphs`` (the graphs
  carry audio as (frames, samples per frame); the host's protocol is flat);
* ``FlowEngines`` + ``FlowStream``: the flow as ``tts_direct_update(stream=True)`` drives it
  (``edgevoice.models.vocalnet.flow`` docstring): every call re-encodes prompt + all tokens so far,
  runs the fixed Euler schedule from the same noise prefix and keeps the frames past the offset.

No torch: the run-time path imports numpy and the runners only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError


class DecoderEngines:
    """The MTP speech decoder's two graphs; the state lives here between calls (one utterance)."""

    def __init__(self, text: Runner, units: Runner):
        self.text_runner, self.units_runner = text, units
        self.state = text.initial_state(1)

    def reset(self) -> None:
        self.state = self.text_runner.initial_state(1)

    def _run(self, runner: Runner, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = runner.infer({**feeds, **self.state})
        wiring = runner.component.state
        self.state = {wiring[name]: outputs.pop(name) for name in list(outputs) if name in wiring}
        return outputs

    def text(self, rows: np.ndarray, prenn_len: int, text_len: int) -> None:
        feeds = {"rows": np.asarray(rows, np.float32)[None], "prenn_len": np.array([prenn_len], np.int64),
                 "text_len": np.array([text_len], np.int64)}
        self._run(self.text_runner, feeds)

    def units(self, tokens: Sequence[int], text_len: int, speech_len: Sequence[int]) -> np.ndarray:
        feeds = {"tokens": np.asarray(tokens, np.int64)[None], "text_len": np.array([text_len], np.int64),
                 "speech_len": np.asarray(speech_len, np.int64)[None]}
        return self._run(self.units_runner, feeds)["logits"][0]  # (N, V)


class HiftEngines:
    """``hift_source`` / ``hift_decode`` behind the flat-audio protocol of ``HiftStream``."""

    def __init__(self, source: Runner, decode: Runner, samples_per_frame: int):
        self.source_runner, self.decode_runner, self.per_frame = source, decode, samples_per_frame

    def source(self, mel: np.ndarray, phase: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = mel.shape[-1]
        noise = np.ascontiguousarray(noise, np.float32).reshape(1, noise.shape[1], frames, self.per_frame)
        out = self.source_runner.infer({"mel": np.ascontiguousarray(mel, np.float32), "phase": phase, "noise": noise})
        return out["f0"], out["source"].reshape(1, 1, frames * self.per_frame)

    def decode(self, mel: np.ndarray, source: np.ndarray) -> np.ndarray:
        frames = mel.shape[-1]
        source = np.ascontiguousarray(source, np.float32).reshape(1, 1, frames, self.per_frame)
        out = self.decode_runner.infer({"mel": np.ascontiguousarray(mel, np.float32), "source": source})
        return out["audio"].reshape(1, frames * self.per_frame)


@dataclass(frozen=True)
class FlowFacts:
    """The manifest's ``flow`` section."""

    token_mel_ratio: int
    pre_lookahead: int
    euler: tuple[tuple[float, float], ...]  # (t, dt) per step, float32 values of the reference's recurrence
    chunk_tokens: int
    chunk_advance: int
    final_hop: int
    max_tokens: int

    @classmethod
    def from_config(cls, flow: dict) -> FlowFacts:
        return cls(flow["token_mel_ratio"], flow["pre_lookahead"], tuple((t, dt) for t, dt in flow["euler"]),
                   flow["chunk_tokens"], flow["chunk_advance"], flow["final_hop"], flow["max_tokens"])


class FlowEngines:
    """One flow call: tokens after the prompt -> mel frames after the prompt's."""

    def __init__(self, encoder: Runner, step: Runner, facts: FlowFacts, prompt_tokens: np.ndarray,
                 prompt_feat: np.ndarray, embedding: np.ndarray, noise: np.ndarray):
        self.encoder, self.step, self.facts = encoder, step, facts
        self.prompt_tokens = np.asarray(prompt_tokens, np.int64)
        self.prompt_feat = np.asarray(prompt_feat, np.float32)  # (2P, 80)
        self.embedding = np.asarray(embedding, np.float32)[None]  # (1, S)
        self.noise = np.asarray(noise, np.float32)  # (80, max_frames)

    def mel(self, tokens: Sequence[int], finalize: bool) -> np.ndarray:
        """(80, frames) new mel for ``tokens`` (all reply tokens so far) after the prompt."""
        f = self.facts
        ids = np.concatenate([self.prompt_tokens, np.asarray(tokens, np.int64)])[None]
        if ids.shape[1] > f.max_tokens:
            raise EdgevoiceError(f"the flow graphs take {f.max_tokens} tokens (prompt included) and {ids.shape[1]} "
                                 "are needed; export with a larger VocalNetLimits.max_reply_units")
        out = self.encoder.infer({"tokens": ids, "speaker_embedding": self.embedding})
        mu, spks = out["mu"], out["spks"]
        if not finalize:  # the last look-ahead frames saw zero padding for tokens not yet here
            mu = mu[:, :, : mu.shape[2] - f.pre_lookahead * f.token_mel_ratio]
        frames, prompt_frames = mu.shape[2], self.prompt_feat.shape[0]
        cond = np.zeros_like(mu)
        cond[0, :, :prompt_frames] = self.prompt_feat.T
        x = self.noise[None, :, :frames].copy()
        mu, cond = np.ascontiguousarray(mu), np.ascontiguousarray(cond)
        for t, dt in f.euler:
            feeds = {"x": x, "mu": mu, "spks": spks, "cond": cond, "t": np.array([t], np.float32),
                     "dt": np.array([dt], np.float32)}
            x = self.step.infer(feeds)["x_next"]
        return x[0, :, prompt_frames:]


class FlowStream:
    """Reply tokens in, new mel chunks out, on the reference's streaming schedule."""

    def __init__(self, engines: FlowEngines):
        self.engines, self.facts = engines, engines.facts
        self.tokens: list[int] = []
        self.offset = 0

    def _call(self, n_tokens: int, finalize: bool) -> np.ndarray:
        mel = self.engines.mel(self.tokens[:n_tokens], finalize)
        return mel[:, self.offset * self.facts.token_mel_ratio:]

    def push(self, units: Sequence[int], last: bool) -> list[np.ndarray]:
        """Add units; the mel chunks (80, frames) they complete (the final call flushes the rest)."""
        f = self.facts
        self.tokens.extend(int(u) for u in units)
        chunks = []
        if not last:
            if len(self.tokens) - self.offset >= f.chunk_tokens:
                chunks.append(self._call(self.offset + f.chunk_tokens, finalize=False))
                self.offset += f.chunk_advance
            return chunks
        needed = f.final_hop + f.pre_lookahead
        while len(self.tokens) - self.offset >= needed:
            chunks.append(self._call(self.offset + needed, finalize=False))
            self.offset += f.final_hop
        if self.tokens:
            chunks.append(self._call(len(self.tokens), finalize=True))
        self.offset = len(self.tokens)
        return chunks
