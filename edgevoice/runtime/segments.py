"""Speech segments from per-chunk speech probabilities (hysteresis + minimum durations)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VadOptions:
    """How probabilities become speech segments; defaults follow Silero's own."""

    threshold: float = 0.5  # a chunk above this starts (or continues) speech
    neg_threshold: float | None = None  # speech ends below this; None = threshold - 0.15
    min_speech_ms: float = 250.0  # shorter bursts are dropped (clicks, "mhm" is ~300 ms)
    min_silence_ms: float = 100.0  # pauses shorter than this do not end a segment
    speech_pad_ms: float = 30.0  # widen segments so word edges are not clipped

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold must be in [0, threshold], got {self.neg_threshold}")
        for name in ("min_speech_ms", "min_silence_ms", "speech_pad_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def end_threshold(self) -> float:
        return self.threshold - 0.15 if self.neg_threshold is None else self.neg_threshold


@dataclass(frozen=True)
class SpeechSegment:
    start: float  # seconds from the start of the audio
    end: float  # seconds

    @property
    def duration(self) -> float:
        return self.end - self.start


def speech_segments(probs: np.ndarray, chunk_seconds: float, options: VadOptions = VadOptions()) -> list[SpeechSegment]:
    """Segments of ``probs`` (one probability per chunk of ``chunk_seconds``)."""
    raw, start, silence_since = [], None, None
    min_silence = options.min_silence_ms / 1000.0
    for i, p in enumerate(probs):
        t = i * chunk_seconds
        if start is None:
            if p >= options.threshold:
                start, silence_since = t, None
            continue
        if p >= options.threshold:
            silence_since = None
        elif p < options.end_threshold:
            silence_since = t if silence_since is None else silence_since
            if t + chunk_seconds - silence_since >= min_silence:
                raw.append((start, silence_since))
                start, silence_since = None, None
    if start is not None:
        raw.append((start, silence_since if silence_since is not None else len(probs) * chunk_seconds))
    return _finish(raw, len(probs) * chunk_seconds, options)


def _finish(raw: list[tuple[float, float]], total: float, options: VadOptions) -> list[SpeechSegment]:
    pad = options.speech_pad_ms / 1000.0
    kept = [(s, e) for s, e in raw if e - s >= options.min_speech_ms / 1000.0]
    segments: list[SpeechSegment] = []
    for s, e in kept:
        s, e = max(0.0, s - pad), min(total, e + pad)
        if segments and s <= segments[-1].end:  # padding made neighbours touch
            segments[-1] = SpeechSegment(segments[-1].start, e)
        else:
            segments.append(SpeechSegment(round(s, 3), round(e, 3)))
    return [SpeechSegment(round(g.start, 3), round(g.end, 3)) for g in segments]
