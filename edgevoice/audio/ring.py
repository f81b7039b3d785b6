"""Single-producer/single-consumer float32 PCM ring with absolute sample positions.

Written here rather than taken from a library because the audio callback needs three things at
once that queue/deque-based buffers do not give: no allocation and no lock that can block the
callback, positions that are absolute sample counts (so every stage can say "sample 480 000"
without wrap-around arithmetic), and exact accounting of what was lost.

Rules:
- The producer only advances ``write_position``; the consumer only advances ``read_position``.
  Each counter has one writer, and reading a Python int is atomic, so no lock is needed.
- Overrun (producer laps the consumer): the oldest audio is lost. The consumer notices, skips to
  the oldest sample still present and adds the skipped count to ``overrun_samples``. Data copied
  while the producer was overwriting it is detected after the copy and skipped the same way, so
  the consumer never returns torn samples.
- Underrun (consumer wants more than there is): ``read_into(..., pad=True)`` fills the rest with
  silence and adds it to ``underrun_samples`` — what a speaker callback must do.
"""

from __future__ import annotations

import numpy as np


class AudioRing:
    """A preallocated mono float32 ring buffer. Not thread-safe beyond one producer + one consumer."""

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._data = np.zeros(capacity, dtype=np.float32)
        self.write_position = 0  # absolute count of samples ever written (published)
        self._write_claim = 0  # end of the write in progress: slots below claim - capacity may be torn
        self.read_position = 0  # absolute count of samples consumed or dropped
        self._overrun_counted = 0  # lost samples the consumer has already skipped
        self.underrun_samples = 0  # silence handed out because the producer fell behind

    @property
    def overrun_samples(self) -> int:
        """Samples lost because the consumer fell behind (including ones not yet skipped)."""
        return self._overrun_counted + max(0, self.write_position - self.read_position - self.capacity)

    @property
    def readable(self) -> int:
        """Samples available to the consumer now (at most ``capacity``)."""
        return min(self.write_position - self.read_position, self.capacity)

    def write(self, samples: np.ndarray) -> None:
        """Producer: append ``samples`` (1-D float32); never blocks, never allocates."""
        n = len(samples)
        if n > self.capacity:  # only the newest `capacity` samples can survive anyway
            self.write_position += n - self.capacity
            self._write_claim = self.write_position
            samples, n = samples[-self.capacity :], self.capacity
        self._write_claim = self.write_position + n  # announce which slots are about to change
        start = self.write_position % self.capacity
        first = min(n, self.capacity - start)
        self._data[start : start + first] = samples[:first]
        self._data[: n - first] = samples[first:]
        self.write_position = self._write_claim  # publish only after the data is in place

    def read_into(self, out: np.ndarray, pad: bool = False) -> int:
        """Consumer: copy up to ``len(out)`` samples into ``out``; return how many were real audio.

        With ``pad`` the rest of ``out`` is zero-filled and counted as underrun.
        """
        self._skip_overrun()
        n = min(len(out), self.write_position - self.read_position)
        start_position = self.read_position
        self._copy_out(start_position, out[:n])
        # The producer may have lapped us during the copy (or be overwriting now): those samples are lost.
        lost = min(n, self._write_claim - self.capacity - start_position)
        if lost > 0:
            n = max(0, n - lost)
            out[: n] = out[lost : lost + n] if n else out[:0]
            start_position += lost
            self._overrun_counted += lost
        self.read_position = start_position + n
        if pad and n < len(out):
            out[n:] = 0.0
            self.underrun_samples += len(out) - n
        return n

    def read(self, max_samples: int) -> np.ndarray:
        """Consumer convenience (allocates): up to ``max_samples`` samples, no padding."""
        out = np.empty(min(max_samples, self.capacity), dtype=np.float32)
        return out[: self.read_into(out)]

    def clear(self) -> int:
        """Consumer: drop everything buffered (e.g. on barge-in); return how many samples went."""
        self._skip_overrun()
        dropped = self.write_position - self.read_position
        self.read_position = self.write_position
        return dropped

    def _skip_overrun(self) -> None:
        behind = self.write_position - self.read_position - self.capacity
        if behind > 0:
            self.read_position += behind
            self._overrun_counted += behind

    def _copy_out(self, position: int, out: np.ndarray) -> None:
        n = len(out)
        start = position % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._data[start : start + first]
        out[first:n] = self._data[: n - first]
