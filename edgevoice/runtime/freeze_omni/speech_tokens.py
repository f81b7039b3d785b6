"""Host side of Freeze-Omni's speech path: choosing codec tokens and turning them into audio.

The speech decoder graphs return logits; everything data-dependent happens here, in numpy:

* choosing the next token: greedy, or the reference's top-k sampling (softmax, keep the k most
  likely, renormalize, draw), after its optional repetition penalty;
* the token loop: SOS first, stop at EOS (not emitted) or after ``max_tokens``;
* the codec FIFO: tokens are decoded in overlapping windows (left context + chunk + look-ahead),
  each window's audio trimmed by the context and look-ahead samples, as ``llm2TTS.run`` does;
* the quiet-point cut: each decoded chunk is emitted only up to its quietest point (or held back
  when nothing is quiet enough), so segments join in near-silence;
* the server's first packet (``bin/server.py`` ``decoder``): the reply's first segment decodes in
  smaller windows with a looser quiet threshold (``LivePlan``), and its first packet starts at the
  first sample louder than a level, so the first sound is not preceded by near-silence.

Nothing here imports torch: the runtime drives the graphs through any backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from edgevoice.errors import EdgevoiceError


def choose_greedy(logits: np.ndarray) -> int:
    """The most likely token of logits (V,); ties go to the lowest id."""
    return int(np.argmax(logits))


class TopKSampler:
    """The reference's sampler: softmax, the k most likely renormalized, one multinomial draw."""

    def __init__(self, k: int, seed: int | None = None):
        if k < 1:
            raise EdgevoiceError(f"top-k must be at least 1, got {k}; use 1 for greedy decoding")
        self.k = k
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.k == 1:
            return choose_greedy(logits)
        scores = np.asarray(logits, dtype=np.float64)
        top = np.argsort(-scores, kind="stable")[: self.k]  # (k,)
        weights = np.exp(scores[top] - scores[top[0]])  # softmax restricted to the top k = renormalized
        return int(self.rng.choice(top, p=weights / weights.sum()))


def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int], window: int, penalty: float) -> np.ndarray:
    """Divide the logits of tokens in the last ``window`` of ``history`` by ``penalty``.

    The reference loops over a set of 0-d tensors, which never merges equal ids, so a token is
    divided once per occurrence in the window: reproduced with ``penalty ** count``. The history
    starts with SOS, as the reference's does. ``window <= 0`` disables the penalty (the default).
    """
    if window <= 0:
        return logits
    ids, counts = np.unique(np.asarray(history[-window:], dtype=np.int64), return_counts=True)
    out = np.array(logits, dtype=np.float32, copy=True)
    out[ids] = out[ids] / np.float32(penalty) ** counts
    return out


@dataclass(frozen=True)
class SpeechTokenRule:
    """When the token loop stops and how it chooses."""

    sos_id: int  # fed first
    eos_id: int  # stops the loop; never emitted
    max_tokens: int = 1000  # AR steps per segment (the reference's default)
    penalty_window: int = -1  # repetition penalty over this many past tokens; <= 0 disables it
    penalty: float = 1.1  # divisor of a repeated token's logit


def generate_speech_tokens(
    step: Callable[[int], np.ndarray], rule: SpeechTokenRule, choose: Callable[[np.ndarray], int] = choose_greedy
) -> Iterator[int]:
    """Codec tokens of one segment. ``step(token)`` feeds one token and returns the next logits (V,).

    The caller has already run the prefix and text graphs on the same state.
    """
    history, token = [rule.sos_id], rule.sos_id
    for _ in range(rule.max_tokens):
        logits = apply_repetition_penalty(step(token), history, rule.penalty_window, rule.penalty)
        token = choose(logits)
        history.append(token)
        if token == rule.eos_id:
            return
        yield token


@dataclass(frozen=True)
class CodecStreamConfig:
    """How tokens are grouped into codec windows and how decoded chunks are cut."""

    hop: int = 600  # samples per token (24 kHz at 40 Hz)
    chunk: int = 40  # new tokens emitted per window (1 s)
    padding: int = 10  # context tokens on each side of a chunk, decoded and trimmed away
    first_chunk: int | None = None  # chunk of the first window (the server uses 20); None = chunk
    quiet_window: int = 2401  # samples of the sliding |x| sum that finds a quiet cut point
    quiet_threshold: float = 0.01  # mean |x| under which a chunk may be cut there

    def __post_init__(self) -> None:
        if self.padding < 1 or self.chunk < 1 or (self.first_chunk is not None and self.first_chunk < 1):
            # padding 0 makes the reference trim everything (``x[:-0]`` is empty): not a usable setting.
            raise EdgevoiceError("codec chunk and padding must be at least 1 token; the reference uses 40 and 10")

    @property
    def max_window(self) -> int:  # tokens of the largest decode call
        return 2 * self.padding + max(self.chunk, self.first_chunk or self.chunk)


@dataclass(frozen=True)
class CodecWindow:
    """One codec call: decode ``tokens``, keep samples [skip * hop, len - drop * hop)."""

    tokens: np.ndarray  # (T,) int64
    skip: int  # leading context tokens whose audio was emitted before
    drop: int  # trailing look-ahead tokens whose audio the next window emits

    def trim(self, pcm: np.ndarray, hop: int) -> np.ndarray:
        return pcm[..., self.skip * hop : pcm.shape[-1] - self.drop * hop]


class CodecTokenFifo:
    """Groups tokens into overlapping windows: 0 + chunk + padding first, then padding + chunk + padding.

    After each full window the FIFO keeps its last 2 * padding tokens: the left context of the
    next window and the look-ahead tokens not emitted yet. ``finish`` decodes what is left.
    """

    def __init__(self, config: CodecStreamConfig = CodecStreamConfig()):
        self.config = config
        self.tokens: list[int] = []
        self.left = 0  # context tokens at the head of the FIFO (0 before the first window)

    def _window_size(self) -> int:
        c = self.config
        chunk = (c.first_chunk or c.chunk) if self.left == 0 else c.chunk
        return self.left + chunk + c.padding

    def push(self, token: int) -> CodecWindow | None:
        self.tokens.append(int(token))
        if len(self.tokens) < self._window_size():
            return None
        pad = self.config.padding
        window = CodecWindow(np.asarray(self.tokens, dtype=np.int64), self.left, pad)
        self.left = pad
        self.tokens = self.tokens[-2 * pad :]
        return window

    def finish(self) -> CodecWindow | None:
        """The rest (up to the end, no look-ahead), or None when no token is pending."""
        if not self.tokens:
            return None
        window = CodecWindow(np.asarray(self.tokens, dtype=np.int64), self.left, 0)
        self.tokens, self.left = [], 0
        return window


def quiet_cut(held: np.ndarray, pcm: np.ndarray, window: int, threshold: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference's ``find_min_sum_index``: (new held-back audio, audio to emit or None).

    In the second half of ``pcm`` it finds the window of ``window`` samples with the smallest
    |x| sum and, inside it, the quietest sample. If that window's mean |x| is under
    ``threshold``, it emits ``held`` + pcm up to that sample and holds the rest; otherwise it
    holds everything. The search bounds reproduce the reference's arithmetic, quirks included
    (the end bound adds the window start twice).
    """
    length = pcm.shape[-1]
    if length < window:  # no full window to measure (the reference fails here): hold it all
        return np.concatenate([held, pcm]), None
    magnitude = np.abs(pcm.astype(np.float64))
    sums = np.convolve(magnitude, np.ones(window), mode="valid")  # (L - window + 1,)
    search_from = length // 2 - window // 2
    best = int(np.argmin(sums[search_from:]))
    min_mean = sums[search_from:][best] / window
    start = max(0, best + search_from)
    end = min(length, best + window + start)
    cut = int(np.argmin(magnitude[start:end])) + start
    if min_mean < threshold:
        return pcm[cut:], np.concatenate([held, pcm[:cut]])
    return np.concatenate([held, pcm]), None


def trim_leading_quiet(pcm: np.ndarray, level: float) -> np.ndarray:
    """``pcm`` from its first sample with |x| > ``level``; unchanged when none is that loud.

    The reference server does this to the first packet of a reply (``bin/server.py`` ``decoder``,
    level 0.03); a packet with no such sample is sent whole there too.
    """
    loud = np.flatnonzero(np.abs(pcm) > level)
    return pcm[loud[0] :] if loud.size else pcm


@dataclass(frozen=True)
class LivePlan:
    """The reference server's codec settings (``checkpoints/server.json`` read by ``bin/server.py``).

    The reply's first segment uses ``first`` (server: chunk 20, quiet threshold 0.1), later
    segments ``later`` (chunk 40, threshold 0.015); the first packet is trimmed at ``trim_level``.
    """

    first: CodecStreamConfig
    later: CodecStreamConfig
    trim_level: float | None = 0.03  # None: no trim

    @classmethod
    def from_config(cls, live: dict) -> LivePlan:
        """From the manifest's ``codec.live`` section."""
        return cls(CodecStreamConfig(**live["first_fifo"]), CodecStreamConfig(**live["fifo"]), live.get("trim_level"))


class SpeechAudioStream:
    """Tokens in, PCM out, as ``llm2TTS.run``: FIFO windows, codec calls, trims and quiet cuts.

    ``decode(tokens (T,) int64) -> pcm (T * hop,) float32`` runs the codec graph. With
    ``first_packet_trim``, the first packet out (even an empty one, as the server counts it) is
    trimmed by ``trim_leading_quiet``.
    """

    def __init__(self, decode: Callable[[np.ndarray], np.ndarray], config: CodecStreamConfig = CodecStreamConfig(),
                 first_packet_trim: float | None = None):
        self.decode = decode
        self.config = config
        self.fifo = CodecTokenFifo(config)
        self.held = np.zeros(0, dtype=np.float32)
        self.trim_level = first_packet_trim  # set to None once the first packet is out

    def _packet(self, pcm: np.ndarray) -> np.ndarray:
        if self.trim_level is not None:
            pcm, self.trim_level = trim_leading_quiet(pcm, self.trim_level), None
        return pcm

    def _decoded(self, window: CodecWindow) -> np.ndarray:
        pcm = np.asarray(self.decode(window.tokens), dtype=np.float32).reshape(-1)
        expected = len(window.tokens) * self.config.hop
        if pcm.shape[0] != expected:
            raise EdgevoiceError(f"the codec returned {pcm.shape[0]} samples for {len(window.tokens)} tokens, expected "
                                 f"{expected}; is CodecStreamConfig.hop the package's codec hop?")
        return window.trim(pcm, self.config.hop)

    def push(self, token: int) -> np.ndarray | None:
        """Audio ready after this token, or None."""
        window = self.fifo.push(token)
        if window is None:
            return None
        self.held, ready = quiet_cut(self.held, self._decoded(window), self.config.quiet_window, self.config.quiet_threshold)
        return None if ready is None else self._packet(ready)

    def finish(self) -> np.ndarray:
        """Everything not emitted yet: held audio plus the decoded rest (the reference does not cut it)."""
        window = self.fifo.finish()
        if window is None:  # nothing pending: the reference yields nothing here either
            out, self.held = self.held, np.zeros(0, dtype=np.float32)
            return out
        out, self.held = np.concatenate([self.held, self._decoded(window)]), np.zeros(0, dtype=np.float32)
        return self._packet(out)
