"""AudioRing: ordering, wrap-around and exact accounting, checked against a plain list model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgevoice.audio.ring import AudioRing

operations = st.lists(
    st.one_of(st.tuples(st.just("write"), st.integers(0, 40)), st.tuples(st.just("read"), st.integers(0, 40)),
              st.tuples(st.just("read_pad"), st.integers(0, 40)), st.tuples(st.just("clear"), st.just(0))),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 32), ops=operations)
def test_matches_model(capacity, ops):
    ring, model = AudioRing(capacity), []  # model: the samples still readable, oldest first
    next_value, written, read, dropped, padded = 0.0, 0, 0, 0, 0
    for op, n in ops:
        if op == "write":
            block = np.arange(next_value, next_value + n, dtype=np.float32)
            next_value += n
            ring.write(block)
            model.extend(block.tolist())
            written += n
            if len(model) > capacity:
                dropped += len(model) - capacity
                del model[: len(model) - capacity]
        elif op == "clear":
            assert ring.clear() == len(model)
            read += len(model)
            model.clear()
        else:
            out = np.full(n, -1.0, dtype=np.float32)
            got = ring.read_into(out, pad=op == "read_pad")
            expected = model[:got]
            assert got == min(n, len(model))
            assert out[:got].tolist() == expected  # oldest surviving samples, in order
            del model[:got]
            read += got
            if op == "read_pad":
                assert not out[got:].any()
                padded += n - got
        assert ring.readable == len(model)
        assert ring.write_position == written
        pending = max(0, ring.write_position - ring.read_position - capacity)  # lost, not yet skipped
        assert ring.read_position + pending + ring.readable == written  # every sample read, dropped or waiting
        assert ring.overrun_samples == dropped
        assert ring.underrun_samples == padded
        assert ring.read_position + pending == read + dropped


def test_positions_are_absolute_across_wraps():
    ring = AudioRing(8)
    for k in range(10):
        ring.write(np.full(5, k, dtype=np.float32))
        assert ring.read(5).tolist() == [k] * 5
    assert ring.write_position == ring.read_position == 50
    assert ring.overrun_samples == ring.underrun_samples == 0


def test_oversized_write_keeps_newest():
    ring = AudioRing(4)
    ring.write(np.arange(10, dtype=np.float32))
    assert ring.read(10).tolist() == [6, 7, 8, 9]
    assert ring.overrun_samples == 6 and ring.write_position == 10


def test_concurrent_producer_and_consumer_never_tear():
    """A producer thread writes a counting signal; everything the consumer reads is contiguous runs."""
    ring, total = AudioRing(256), 200_000
    done = threading.Event()

    def produce():
        for start in range(0, total, 37):
            ring.write(np.arange(start, min(start + 37, total), dtype=np.float32))
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    out, last, received = np.empty(64, dtype=np.float32), -1.0, 0
    while not (done.is_set() and ring.readable == 0):
        n = ring.read_into(out)
        if n:
            values = out[:n]
            assert np.all(np.diff(values) == 1.0)  # no torn or reordered samples inside a read
            assert values[0] > last  # gaps only where audio was dropped and counted
            last, received = float(values[-1]), received + n
    thread.join()
    assert received + ring.overrun_samples == total


def test_bad_capacity():
    with pytest.raises(ValueError):
        AudioRing(0)
