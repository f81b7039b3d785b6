"""The host side of a KV cache whose capacity is a dynamic dim: when it grows and what it holds."""

import numpy as np
import pytest

from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component, DimRange, TensorSpec
from edgevoice.runtime.batching import RowLayout
from edgevoice.runtime.cache_growth import CacheGrowth


def _llm_entry(capacity) -> Component:
    """An LLM-shaped entry with two cache tensors of ``capacity`` rows ("context" or a number)."""
    caches = [TensorSpec(f"{kind}_cache_0", "float32", ("batch", 2, capacity, 4)) for kind in ("k", "v")]
    outputs = [TensorSpec("logits", "float32", ("batch", 10))]
    outputs += [TensorSpec(f"{spec.name}_out", "float32", spec.shape) for spec in caches]
    dims = {"batch": DimRange(1, 1, 4), "tokens": DimRange(1, 4, 8)}
    if capacity == "context":
        dims["context"] = DimRange(16, 16, 48)
    return Component(
        name="llm", onnx="llm.onnx", opset=20, precision="fp32",
        inputs=(TensorSpec("input_ids", "int64", ("batch", "tokens")), TensorSpec("position", "int64", ("batch",)), *caches),
        outputs=tuple(outputs), dynamic_dims=dims,
        state={f"{spec.name}_out": spec.name for spec in caches}, initial_state={spec.name: "zeros" for spec in caches},
        stream={}, license="test",
    )


def test_a_fixed_capacity_never_grows():
    assert CacheGrowth.of(_llm_entry(32)) is None


def test_the_cache_starts_at_its_smallest_size_and_grows_by_whole_steps():
    entry = _llm_entry("context")
    growth = CacheGrowth.of(entry)
    assert growth == CacheGrowth(dim="context", axis=2, step=16, most=48)
    state = Runner(entry).initial_state(1)
    assert {v.shape for v in state.values()} == {(1, 2, 16, 4)}
    assert growth.room_for(state, 16)["k_cache_0"] is state["k_cache_0"]  # room enough: no copy

    state["k_cache_0"][0, :, 3] = 7.0  # a written row
    grown = growth.room_for(state, 17)  # one row past the capacity: one whole step more
    assert {v.shape for v in grown.values()} == {(1, 2, 32, 4)}
    assert (grown["k_cache_0"][0, :, 3] == 7.0).all() and not grown["k_cache_0"][:, :, 16:].any()
    assert np.array_equal(grown["k_cache_0"][:, :, :16], state["k_cache_0"])
    assert growth.capacity(growth.room_for(grown, 40)) == 48  # the largest size, not beyond


def test_growing_past_the_largest_size_says_how_many_tokens_fit():
    entry = _llm_entry("context")
    with pytest.raises(EdgevoiceError, match="holds 48 tokens; 49 do not fit"):
        CacheGrowth.of(entry).room_for(Runner(entry).initial_state(1), 49)


def test_caches_of_two_capacities_never_share_a_batched_call():
    # Their shapes differ off the batch dim, so the batcher runs them as two calls.
    layout = RowLayout(_llm_entry("context"))
    step = {"input_ids": np.zeros((1, 1), np.int64), "position": np.zeros(1, np.int64)}
    small = Runner(_llm_entry("context")).initial_state(1)
    large = CacheGrowth.of(_llm_entry("context")).room_for(small, 20)
    assert layout.signature({**step, **small}) != layout.signature({**step, **large})
    assert layout.signature({**step, **small}) == layout.signature({**step, **Runner(_llm_entry("context")).initial_state(1)})
