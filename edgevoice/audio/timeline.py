"""A long microphone recording described by clips placed on silence.

An hour of 16 kHz audio is 230 MB as an array; a conversation is mostly silence with a few
seconds of speech now and then. ``Timeline`` holds only the clips and produces any span on
demand, so ``FileIO`` can play hour-long conversations in bounded memory (the soak test and
``benchmarks/hour_bench.py``).
"""

from __future__ import annotations

import bisect

import numpy as np

from edgevoice.errors import EdgevoiceError


class Timeline:
    """``seconds`` of silence at ``rate`` with clips placed on it; sliced like a 1-D float32 array."""

    def __init__(self, seconds: float, rate: int):
        if seconds <= 0 or rate <= 0:
            raise EdgevoiceError(f"a timeline needs a positive length and rate, got {seconds} s at {rate} Hz")
        self.rate = int(rate)
        self._length = int(round(seconds * rate))
        self._starts: list[int] = []  # sorted clip start samples
        self._clips: list[np.ndarray] = []

    def place(self, at_seconds: float, clip: np.ndarray) -> None:
        """Put ``clip`` (mono float32 at ``rate``) at ``at_seconds``; clips must not overlap."""
        start = int(round(at_seconds * self.rate))
        clip = np.asarray(clip, dtype=np.float32)
        if clip.ndim != 1 or start < 0 or start + len(clip) > self._length:
            raise EdgevoiceError(f"a clip of {len(clip) / self.rate:.2f} s at {at_seconds:.2f} s does not fit the timeline")
        i = bisect.bisect(self._starts, start)
        before_ends = i > 0 and self._starts[i - 1] + len(self._clips[i - 1]) > start
        after_starts = i < len(self._starts) and self._starts[i] < start + len(clip)
        if before_ends or after_starts:
            raise EdgevoiceError(f"the clip at {at_seconds:.2f} s overlaps another; leave a gap between turns")
        self._starts.insert(i, start)
        self._clips.insert(i, clip)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, span: slice) -> np.ndarray:
        if not isinstance(span, slice) or span.step not in (None, 1):
            raise TypeError("a Timeline is read by contiguous slices")
        start, stop, _ = span.indices(self._length)
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        first = max(0, bisect.bisect(self._starts, start) - 1)
        for clip_start, clip in zip(self._starts[first:], self._clips[first:]):
            if clip_start >= stop:
                break
            lo, hi = max(start, clip_start), min(stop, clip_start + len(clip))
            if hi > lo:
                out[lo - start : hi - start] = clip[lo - clip_start : hi - clip_start]
        return out
