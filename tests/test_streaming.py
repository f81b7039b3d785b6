"""The streaming contract's wrapper and test helpers, on toy modules where the answer is known."""

from __future__ import annotations

import pytest
import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.streaming import StateSpec, StreamingModule, check_causal, check_streaming_matches_full


class RunningSum(StreamingModule):
    """y[t] = sum of x up to t: causal, one float of state."""

    chunk_size = 4

    def state_specs(self):
        return (StateSpec("total", (1, 1)),)

    def step(self, x, total):
        y = torch.cumsum(x, dim=-1) + total
        return y, y[:, -1:]

    def forward(self, x):
        return torch.cumsum(x, dim=-1)


class Peeking(RunningSum):
    """Uses the last sample of the whole input: not causal, and a step cannot reproduce it."""

    def forward(self, x):
        return torch.cumsum(x, dim=-1) + x[:, -1:]


def test_streaming_matches_full_on_a_streaming_module():
    x = torch.randn(2, 24)
    assert check_streaming_matches_full(RunningSum(), x) < 1e-5
    assert check_causal(RunningSum(), x, cut_chunks=2, atol=1e-6) <= 1e-6


def test_helpers_catch_a_non_streaming_module():
    x = torch.randn(2, 24)
    with pytest.raises(AssertionError, match="streaming differs"):
        check_streaming_matches_full(Peeking(), x)
    with pytest.raises(AssertionError, match="appending input changed"):
        check_causal(Peeking(), x, cut_chunks=2)


def test_snapshot_restore_rolls_back_state():
    streamer = RunningSum().streamer(batch_size=1)
    streamer(torch.ones(1, 4))
    saved = streamer.snapshot()
    after_more = streamer(torch.ones(1, 4))
    streamer(torch.ones(1, 4))
    streamer.restore(saved)
    assert torch.equal(streamer(torch.ones(1, 4)), after_more)


def test_snapshot_is_a_copy():
    streamer = RunningSum().streamer()
    streamer(torch.ones(1, 4))
    saved = streamer.snapshot()
    saved[0].add_(100)
    assert streamer.state[0].item() == 4.0


def test_restore_refuses_foreign_snapshots():
    streamer = RunningSum().streamer(batch_size=2)
    with pytest.raises(EdgevoiceError, match="another batch size"):
        streamer.restore((torch.zeros(1, 1),))
    with pytest.raises(EdgevoiceError, match="keeps 1"):
        streamer.restore(())


def test_state_batch_dim():
    spec = StateSpec("lstm", (2, 1, 8), batch_dim=1)
    assert spec.zeros(3).shape == (2, 3, 8)
