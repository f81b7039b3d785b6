"""A KV cache that grows in steps: the host side of the LLM graph's dynamic "context" dim.

A decode step's attention and its cache writes cost in proportion to the cache's capacity, not to
the tokens it holds, so a graph exported with ``LlmStep(cache_step=...)`` takes caches of any
capacity from ``cache_step`` to ``max_context`` rows (the manifest's dynamic dim, e.g. "context":
256..1024). The session starts at the smallest and, before a call that would write past the last
row, pads every cache with zero rows up to the next multiple of the step. Rows past the position
are masked by the graph, so the padding is never read as keys. Packages whose cache capacity is
a fixed number (everything exported before the dim) report ``None`` and never grow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component


@dataclass(frozen=True)
class CacheGrowth:
    """Where a graph's cache capacity sits and how far it may grow."""

    dim: str  # the graph's name for the capacity dim, e.g. "context"
    axis: int  # the capacity axis of every cache tensor, e.g. 2 in (batch, kv_heads, "context", head_dim)
    step: int  # rows added at a time: the dim's smallest size
    most: int  # the dim's largest size (the model's max_context)

    @classmethod
    def of(cls, component: Component) -> CacheGrowth | None:
        """The growth rule of ``component``'s caches, or None when their capacity is fixed."""
        if not component.state_inputs:
            return None
        spec = component.input(component.state_inputs[0])
        named = [(i, d) for i, d in enumerate(spec.shape) if isinstance(d, str) and d != "batch"]
        if not named:
            return None
        axis, dim = named[0]
        rows = component.dynamic_dims[dim]
        return cls(dim=dim, axis=axis, step=rows.min, most=rows.max)

    def capacity(self, state: Mapping[str, np.ndarray]) -> int:
        return int(next(iter(state.values())).shape[self.axis])

    def room_for(self, state: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """``state`` with a capacity of at least ``rows`` whole steps (the same arrays when it has it).

        Grows to the next multiple of ``step``, at most ``most``: one copy of the cache per step of
        the conversation, instead of attention over the whole ``most`` rows at every token.
        """
        if rows > self.most:
            raise EdgevoiceError(f"the KV cache holds {self.most} tokens; {rows} do not fit")
        capacity = self.capacity(state)
        target = min(self.most, -(-rows // self.step) * self.step)  # whole steps
        if target <= capacity:
            return dict(state)
        grown = {}
        for name, cache in state.items():
            widths = [(0, 0)] * cache.ndim
            widths[self.axis] = (0, target - capacity)
            grown[name] = np.pad(cache, widths)
        return grown
