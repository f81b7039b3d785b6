"""Whisper at run time: greedy decoding over the asr_encoder/asr_decoder engines, and streaming.

numpy + Runner only (no torch). The log-mel front end is inside the encoder graph (a conv-STFT
that TensorRT 10.3 runs; see ``edgevoice.models.whisper.layers.LogMel``), so the host only
zero-pads PCM to the 30 s window and passes the number of valid samples.

Decoding follows faster-whisper's greedy path (beam 1, temperature 0, no timestamps, no
previous-text conditioning) so transcripts match it token for token: the same prompt, the same
suppressed tokens, the blank/end-of-text ban at the first step, the same no-speech rule.

Streaming (``StreamingRecognizer``): while the user speaks, the growing utterance is re-encoded
every ``hop_seconds`` and decoded into a partial hypothesis, drafted by the previous one;
``finish()`` runs the final pass over the whole utterance, which is exactly what a batch
transcription of it gives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevoice.audio.wav import validate_pcm
from edgevoice.backends.abort import Abort, CallAborted
from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.drafts import continuation

RECIPE_COMPONENTS = ("asr_encoder", "asr_decoder")
# faster-whisper's defaults for skipping a window as silence.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0


class Detokenizer:
    """Token ids -> text with the model's own ``tokenizer.json`` (the ``tokenizers`` library)."""

    def __init__(self, path: str | Path, eot: int):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EdgevoiceError("speech recognition needs the 'tokenizers' package: pip install tokenizers") from exc
        path = Path(path)
        if not path.is_file():
            raise EdgevoiceError(f"tokenizer file {path} is missing; re-export the package")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.eot = eot  # ids from here on are special (<|endoftext|>, <|startoftranscript|> ...)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t < self.eot])


@dataclass(frozen=True)
class Transcript:
    """The result of decoding one utterance (all its windows)."""

    text: str  # as faster-whisper joins segment texts: leading space per segment, not stripped
    tokens: tuple[int, ...]  # text tokens, end-of-text excluded
    audio_seconds: float  # length of the audio decoded
    encode_seconds: float  # wall time in the encoder engine
    decode_seconds: float  # wall time in the decoder loop (engine + host)
    skipped_windows: int = 0  # windows judged silence by the no-speech rule
    stopped: bool = False  # ``stop`` said so before the end: the text is what was decoded by then
    drafted: int = 0  # leading tokens confirmed from the caller's draft in one decoder call


@dataclass
class _WindowResult:
    tokens: list[int]
    no_speech_prob: float
    avg_logprob: float
    stopped: bool = False  # ``stop`` ended it before end-of-text
    drafted: int = 0  # tokens kept from the draft


class WhisperAsr:
    """Greedy Whisper over two runners; one instance serves one caller at a time."""

    def __init__(self, encoder: Runner, decoder: Runner, tokenizer_path: str | Path):
        self.encoder, self.decoder = encoder, decoder
        enc, dec = encoder.component.stream, decoder.component.stream
        self.sample_rate: int = enc["sample_rate"]
        self.window_samples: int = enc["window_samples"]
        self.max_samples: int = enc["max_samples"]
        self.prompt: list[int] = list(dec["prompt"])
        self.eot: int = dec["eot"]
        self.no_speech: int = dec["no_speech"]
        self.max_length: int = dec["max_length"]
        self.suppress = np.asarray(dec["suppress_tokens"], dtype=np.int64)
        self.suppress_at_begin = np.asarray(dec["suppress_at_begin"], dtype=np.int64)
        self.detokenizer = Detokenizer(tokenizer_path, self.eot)

    @classmethod
    def from_manifest(cls, manifest: Any, backend: str = "ort", device: str = "cpu") -> "WhisperAsr":
        """From a verified engine package holding asr_encoder, asr_decoder and the tokenizer file."""
        from edgevoice.backends import open_runner

        manifest.require_components(RECIPE_COMPONENTS)
        encoder = open_runner(manifest, "asr_encoder", backend=backend, device=device)
        decoder = open_runner(manifest, "asr_decoder", backend=backend, device=device)
        return cls(encoder, decoder, manifest.path(decoder.component.stream["tokenizer"]))

    def encode(self, pcm: np.ndarray, abort: Abort | None = None) -> dict[str, np.ndarray]:
        """Cross-attention K/V of one window of at most ``max_samples`` samples (``CallAborted`` once
        ``abort`` is set)."""
        if pcm.size > self.max_samples:
            raise EdgevoiceError(f"one Whisper window holds at most {self.max_samples} samples, got {pcm.size}; split the audio")
        window = np.zeros((1, self.window_samples), dtype=np.float32)
        window[0, : pcm.size] = pcm
        return self.encoder.infer({"audio": window, "length": np.array([pcm.size], dtype=np.int64)}, abort)

    def decode(self, cross: dict[str, np.ndarray], max_new_tokens: int | None = None,
               stop: Callable[[], bool] | None = None, draft: Sequence[int] = ()) -> _WindowResult:
        """Greedy decoding of one encoded window; the KV cache lives in the decoder stream's state.

        ``stop`` is asked before every token (an answer dropped mid-transcript frees the core at once).
        ``draft``: tokens this window probably holds (an earlier transcript of the same growing audio).
        Each call feeds, after its last known token, the draft's continuation of that token; its
        tokens are kept while each is the greedy choice. Words already heard then cost one call
        instead of one step each (~10 ms a token on 2 cores, nearly flat up to 8 tokens a call), and
        the result is the greedy transcript either way. A rejected continuation's cache slots are
        harmless: later steps overwrite them and the causal mask hides slots beyond the position.
        """
        stream = self.decoder.stream(1)
        budget = self.max_length - len(self.prompt)
        budget = min(budget, max_new_tokens) if max_new_tokens is not None else budget
        draft = [int(t) for t in draft if t < self.eot]
        anchor, guesses, offset = self.prompt, draft[:budget], 0
        tokens, logprob_sum, drafted = [], 0.0, 0
        no_speech_prob, stopped, done = 0.0, False, False
        while not (done or stopped):
            feed = anchor + guesses
            out = stream({"tokens": np.asarray([feed], dtype=np.int64), "offset": np.array([offset], dtype=np.int64), **cross})
            logits = out["logits"][0]  # (T, V)
            if offset == 0:
                # Whisper's no-speech estimate is read at the start-of-transcript position.
                no_speech_prob = float(_softmax(logits[0])[self.no_speech])
            for row, scores in enumerate(logits[len(anchor) - 1 :]):  # row r predicts what guesses[r] guessed
                token, logprob = self._choose(scores, first=not tokens)
                logprob_sum += logprob
                done = token == self.eot or len(tokens) >= budget
                stopped = not done and stop is not None and stop()
                if done or stopped:
                    break
                tokens.append(token)
                if row >= len(guesses) or token != guesses[row]:
                    break  # a new token, or the draft went wrong here: go on from it
                drafted += 1
            anchor, offset = tokens[-1:], len(self.prompt) + len(tokens) - 1
            guesses = continuation(draft, tokens)[: budget - len(tokens)]
        # faster-whisper divides the summed log-probs (end-of-text included) by len + 1.
        return _WindowResult(tokens, no_speech_prob, logprob_sum / (len(tokens) + 1), stopped, drafted)

    def _choose(self, logits: np.ndarray, first: bool) -> tuple[int, float]:
        """Greedy token of one logits row (V,) under the suppression rules, and its log-probability."""
        scores = logits.astype(np.float64)
        scores[self.suppress] = -np.inf
        if first:
            scores[self.suppress_at_begin] = -np.inf  # no blank or empty transcript
        token = int(np.argmax(scores))
        return token, float(scores[token] - _logsumexp(scores))

    def transcribe(self, pcm: np.ndarray, sample_rate: int | None = None, max_new_tokens: int | None = None,
                   stop: Callable[[], bool] | None = None, draft: Sequence[int] = (),
                   abort: Abort | None = None) -> Transcript:
        """Text of mono float32 PCM; audio longer than one window is decoded window by window.

        ``stop`` (optional) is asked between windows, after each encode and before each decoder
        step; once it says True the result so far comes back with ``stopped`` set. ``abort``
        (optional) also stops the encoder mid-call, with the same result. ``draft``
        (optional): the tokens of an earlier transcript of the start of this audio, checked in one
        decoder call (see ``decode``); it only speeds the first window up.
        """
        pcm = validate_pcm(pcm, sample_rate or self.sample_rate, self.sample_rate)
        encode_s = decode_s = 0.0
        tokens: list[int] = []
        texts: list[str] = []
        skipped, stopped, drafted = 0, False, 0
        for start in range(0, pcm.size, self.max_samples):
            t0 = time.perf_counter()
            try:
                cross = self.encode(pcm[start : start + self.max_samples], abort)
            except CallAborted:
                cross = None
            t1 = time.perf_counter()
            encode_s += t1 - t0
            if cross is None or (stop is not None and stop()):
                stopped = True
                break
            result = self.decode(cross, max_new_tokens, stop, draft if start == 0 else ())
            stopped, drafted = result.stopped, drafted + result.drafted
            decode_s += time.perf_counter() - t1
            if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOG_PROB_THRESHOLD:
                skipped += 1
            else:
                tokens += result.tokens
                texts.append(self.detokenizer.decode(result.tokens))
            if stopped:
                break
        return Transcript("".join(texts), tuple(tokens), pcm.size / self.sample_rate, encode_s, decode_s, skipped, stopped,
                          drafted)


@dataclass(frozen=True)
class StreamingOptions:
    """When the streaming recognizer decodes partial hypotheses."""

    hop_seconds: float = 1.0  # re-decode the utterance this often (one 30 s encode each: ~0.7 s on 1 CPU core)
    min_seconds: float = 0.5  # no partial before this much audio: too little to be worth a pass
    partial_max_tokens: int = 64  # cap per partial pass, so a runaway hypothesis cannot stall the stream

    def __post_init__(self) -> None:
        if self.hop_seconds <= 0 or self.min_seconds < 0 or self.partial_max_tokens < 1:
            raise EdgevoiceError("StreamingOptions needs hop_seconds > 0, min_seconds >= 0 and partial_max_tokens >= 1")


@dataclass
class Partial:
    """A partial hypothesis: the text so far of the utterance being spoken."""

    text: str
    audio_seconds: float  # audio heard when it was decoded
    compute_seconds: float  # encode + decode time it took


@dataclass
class StreamingRecognizer:
    """Feed PCM while the user speaks; get partial hypotheses every hop; ``finish()`` for the final text.

    Speech longer than one window is committed window by window: a full window is transcribed
    once, its text kept, and the window starts again empty.
    """

    asr: WhisperAsr
    options: StreamingOptions = field(default_factory=StreamingOptions)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._buffered = 0  # samples in the current window
        self._committed: list[str] = []  # texts of full windows already transcribed
        self._committed_tokens: list[int] = []
        self._draft: tuple[int, ...] = ()  # the current window's last partial: the next pass's draft
        self._next_partial = int(max(self.options.min_seconds, self.options.hop_seconds) * self.asr.sample_rate)
        self.partials: list[Partial] = []

    def _window(self) -> np.ndarray:
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        self._chunks = [pcm]
        return pcm

    def feed(self, pcm: np.ndarray) -> Partial | None:
        """Add a chunk of mono float32 PCM; returns a new partial hypothesis when a hop is due."""
        pcm = validate_pcm(pcm, self.asr.sample_rate, self.asr.sample_rate)
        self._chunks.append(pcm)
        self._buffered += pcm.size
        while self._buffered > self.asr.max_samples:
            self._commit_full_window()
        if self._buffered < self._next_partial:
            return None
        hop = int(self.options.hop_seconds * self.asr.sample_rate)
        while self._next_partial <= self._buffered:
            self._next_partial += hop  # skip hops that a slow pass made us miss
        start = time.perf_counter()
        current = self.asr.transcribe(self._window(), max_new_tokens=self.options.partial_max_tokens, draft=self._draft)
        self._draft = current.tokens
        partial = Partial("".join(self._committed) + current.text, self._buffered / self.asr.sample_rate, time.perf_counter() - start)
        self.partials.append(partial)
        return partial

    def _commit_full_window(self) -> None:
        pcm = self._window()
        head, rest = pcm[: self.asr.max_samples], pcm[self.asr.max_samples :]
        result = self.asr.transcribe(head, draft=self._draft)
        self._draft = ()
        self._committed.append(result.text)
        self._committed_tokens += result.tokens
        self._chunks, self._buffered = [rest], rest.size
        self._next_partial = rest.size + int(self.options.hop_seconds * self.asr.sample_rate)

    def finish(self) -> Transcript:
        """The final pass over the rest of the utterance; the recognizer is then ready for the next one."""
        pcm = self._window()
        if pcm.size == 0 and not self._committed:
            raise EdgevoiceError("finish() was called before any audio was fed; feed() the utterance first")
        result = self.asr.transcribe(pcm, draft=self._draft) if pcm.size else Transcript("", (), 0.0, 0.0, 0.0)
        seconds = (len(self._committed) * self.asr.max_samples + pcm.size) / self.asr.sample_rate
        final = Transcript(
            "".join(self._committed) + result.text,
            tuple(self._committed_tokens) + result.tokens,
            seconds,
            result.encode_seconds,
            result.decode_seconds,
            result.skipped_windows,
            drafted=result.drafted,
        )
        self.reset()
        return final


def _logsumexp(x: np.ndarray) -> float:
    top = np.max(x)
    return float(top + np.log(np.sum(np.exp(x - top))))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - np.max(x))
    return e / e.sum()
