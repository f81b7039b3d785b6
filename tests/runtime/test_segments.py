"""Probabilities -> speech segments: hysteresis, minimum durations, padding."""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.runtime.segments import SpeechSegment, VadOptions, speech_segments

CHUNK = 0.032


def probs_from(pattern: str) -> np.ndarray:
    """'s' = speech (0.9), 'm' = maybe (0.45, between the thresholds), '.' = silence (0.05)."""
    return np.array([{"s": 0.9, "m": 0.45, ".": 0.05}[c] for c in pattern], dtype=np.float32)


def test_one_segment_with_padding():
    segs = speech_segments(probs_from("." * 10 + "s" * 20 + "." * 10), CHUNK)
    assert segs == [SpeechSegment(round(10 * CHUNK - 0.03, 3), round(30 * CHUNK + 0.03, 3))]


def test_short_burst_is_dropped():
    assert speech_segments(probs_from("." * 10 + "s" * 5 + "." * 10), CHUNK) == []  # 160 ms < 250 ms


def test_short_pause_does_not_split():
    segs = speech_segments(probs_from("s" * 20 + ".." + "s" * 20 + "." * 10), CHUNK)  # 64 ms pause
    assert len(segs) == 1


def test_long_pause_splits():
    segs = speech_segments(probs_from("s" * 20 + "." * 10 + "s" * 20 + "." * 10), CHUNK)
    assert len(segs) == 2 and segs[0].end < segs[1].start


def test_hysteresis_keeps_speech_between_thresholds():
    segs = speech_segments(probs_from("s" * 10 + "m" * 20 + "." * 10), CHUNK)
    assert len(segs) == 1 and segs[0].end >= 30 * CHUNK


def test_speech_to_the_end():
    segs = speech_segments(probs_from("." * 5 + "s" * 20), CHUNK)
    assert segs[-1].end == pytest.approx(25 * CHUNK, abs=1e-3)


@pytest.mark.parametrize("kwargs", [{"threshold": 1.5}, {"neg_threshold": 0.9}, {"min_speech_ms": -1}])
def test_bad_options(kwargs):
    with pytest.raises(ValueError):
        VadOptions(**kwargs)
