"""Parity: the same streamed audio through the torch step and through onnxruntime.

Both sides start from zero state and feed their own state back, chunk by chunk, so a wrong state
wiring shows up as drift over time, not only as a one-step error. Every output, the states
included, is compared at every step; the result is the max abs error per output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgevoice.backends.ort import OrtRunner
from edgevoice.compare import Comparison, compare_outputs
from edgevoice.manifest import Component
from edgevoice.recipes.base import RecipeComponent


def stream_torch(component: RecipeComponent, entry: Component, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every output of every step of the torch module (states included), stacked on a new axis."""
    module = component.module
    input_names = [spec.name for spec in module.input_specs()]
    output_names = [o.name for o in entry.outputs]  # step outputs, then state outputs, in graph order
    state = module.init_state(1)
    steps = []
    with torch.no_grad():
        for feed in feeds:
            results = module.step(*(torch.from_numpy(feed[name]) for name in input_names), *state)
            state = results[len(results) - len(state) :]
            steps.append([r.float().numpy() if r.is_floating_point() else r.numpy() for r in results])
    return {name: np.stack([s[i] for s in steps]) for i, name in enumerate(output_names)}


def stream_onnx(entry: Component, onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    runner = OrtRunner(entry, onnx_path)
    state = runner.initial_state(1)
    steps = []
    for feed in feeds:
        outputs = runner.infer({**feed, **state})
        state = {entry.state[name]: value for name, value in outputs.items() if name in entry.state}
        steps.append(outputs)
    return {name: np.stack([s[name] for s in steps]) for name in steps[0]}


def parity(component: RecipeComponent, entry: Component, onnx_path: Path) -> Comparison:
    """Run the component's parity feeds through torch and onnxruntime; compare every output at every step."""
    feeds = component.parity_feeds()
    reference = stream_torch(component, entry, feeds)
    test = stream_onnx(entry, onnx_path, feeds)
    atol, rtol = component.parity_tolerance[entry.precision]
    return compare_outputs(reference, test, atol=atol, rtol=rtol)
