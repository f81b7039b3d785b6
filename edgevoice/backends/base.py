"""The Runner base: validated inference over a component's I/O contract from the manifest.

Each backend implements ``_infer_impl``; ``infer`` checks names, dtypes and shapes against the
manifest first (Polygraphy's template-method runner), so every backend fails the same clear way.
``StatefulStream`` holds one session's state between steps and can snapshot/restore it.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from edgevoice.backends.abort import Abort, run_checked
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component, TensorSpec


class Runner:
    """Runs one component. Feeds and outputs are dicts of numpy arrays keyed by tensor name."""

    backend = "base"

    def __init__(self, component: Component):
        self.component = component

    def infer(self, feeds: Mapping[str, np.ndarray], abort: Abort | None = None) -> dict[str, np.ndarray]:
        """Outputs for ``feeds``; with ``abort``, raises ``CallAborted`` once another thread sets it."""
        self._validate(feeds)
        if abort is None:
            return self._infer_impl(feeds)
        return self._infer_abortable(feeds, abort)

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _infer_abortable(self, feeds: Mapping[str, np.ndarray], abort: Abort) -> dict[str, np.ndarray]:
        """A backend that cannot stop a call midway runs it whole, checking the flag before and after."""
        return run_checked(abort, lambda: self._infer_impl(feeds))

    def initial_state(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        """Zero state for ``batch_size`` sessions, shaped from the manifest.

        A named state dim other than "batch" (the LLM cache's "context") starts at its smallest
        exported size; the host grows it (``edgevoice.runtime.llm``).
        """
        state = {}
        for name in self.component.state_inputs:
            spec = self.component.input(name)
            shape = [d if not isinstance(d, str) else batch_size if d == "batch" else self.component.dynamic_dims[d].min
                     for d in spec.shape]
            state[name] = np.zeros(shape, dtype=spec.dtype)
        return state

    def stream(self, batch_size: int = 1) -> "StatefulStream":
        return StatefulStream(self, batch_size)

    def _validate(self, feeds: Mapping[str, np.ndarray], state_held: bool = False) -> None:
        """Check names, dtypes and shapes; ``state_held``: a stream keeps the state, feeds lack it."""
        held = set(self.component.state_inputs) if state_held else set()
        specs = [spec for spec in self.component.inputs if spec.name not in held]
        expected = {spec.name for spec in specs}
        if set(feeds) != expected:
            raise EdgevoiceError(
                f"{self.component.name}: inputs {sorted(feeds)} do not match the graph's {sorted(expected)}"
            )
        dims: dict[str, int] = {}
        for spec in specs:
            _check_tensor(self.component, spec, feeds[spec.name], dims)


class StatefulStream:
    """One session's state for a runner: feed non-state inputs, get non-state outputs.

    This one keeps the state as host arrays; GPU runners return streams that keep it on the
    device with the same methods (``__call__``, ``reset``, ``snapshot``, ``restore``).
    """

    def __init__(self, runner: Runner, batch_size: int = 1):
        self.runner = runner
        self.batch_size = batch_size
        self.state = runner.initial_state(batch_size)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.runner.infer({**feeds, **self.state})
        wiring = self.runner.component.state
        self.state = {wiring[out]: outputs.pop(out) for out in list(outputs) if out in wiring}
        return outputs

    def reset(self) -> None:
        self.state = self.runner.initial_state(self.batch_size)

    def snapshot(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.state.items()}

    def restore(self, snapshot: Mapping[str, np.ndarray]) -> None:
        if set(snapshot) != set(self.state):
            raise EdgevoiceError(f"snapshot holds {sorted(snapshot)}, the stream keeps {sorted(self.state)}")
        self.state = {k: np.array(v, copy=True) for k, v in snapshot.items()}


def _check_tensor(component: Component, spec: TensorSpec, value: np.ndarray, dims: dict[str, int]) -> None:
    where = f"{component.name}: input '{spec.name}'"
    if not isinstance(value, np.ndarray):
        raise EdgevoiceError(f"{where} must be a numpy array, got {type(value).__name__}")
    if value.dtype != np.dtype(spec.dtype):
        raise EdgevoiceError(f"{where} has dtype {value.dtype}, expected {spec.dtype}")
    if value.ndim != len(spec.shape):
        raise EdgevoiceError(f"{where} has shape {value.shape}, expected {_fmt(spec.shape)}")
    for size, dim in zip(value.shape, spec.shape):
        if isinstance(dim, str):
            rng = component.dynamic_dims.get(dim)
            if rng is not None and not rng.min <= size <= rng.max:
                raise EdgevoiceError(f"{where}: dim '{dim}'={size} is outside the exported range {rng.min}..{rng.max}")
            if dims.setdefault(dim, size) != size:
                raise EdgevoiceError(f"{where}: dim '{dim}'={size} but another input has {dim}={dims[dim]}")
        elif size != dim:
            raise EdgevoiceError(f"{where} has shape {value.shape}, expected {_fmt(spec.shape)}")


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
