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


def stream_torch(component: RecipeComponent, entry: Component, chunks: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of every step of the torch module, stacked on a new leading axis."""
    module = component.module
    state = module.init_state(1)
    steps = []
    with torch.no_grad():
        for chunk in chunks:
            y, *state = module.step(torch.from_numpy(chunk[None]), *state)
            steps.append([y, *state])
    names = [entry.outputs[0].name] + list(entry.state)
    return {name: np.stack([s[i].float().numpy() for s in steps]) for i, name in enumerate(names)}


def stream_onnx(entry: Component, onnx_path: Path, chunks: np.ndarray) -> dict[str, np.ndarray]:
    runner = OrtRunner(entry, onnx_path)
    state = runner.initial_state(1)
    steps = []
    for chunk in chunks:
        outputs = runner.infer({entry.inputs[0].name: chunk[None].astype(np.float32), **state})
        state = {entry.state[name]: value for name, value in outputs.items() if name in entry.state}
        steps.append(outputs)
    return {name: np.stack([s[name] for s in steps]) for name in steps[0]}


def parity(component: RecipeComponent, entry: Component, onnx_path: Path, audio: np.ndarray) -> Comparison:
    """Stream ``audio`` (mono PCM) through both and compare every output at every step."""
    chunk = component.module.chunk_size
    usable = len(audio) - len(audio) % chunk
    chunks = audio[:usable].reshape(-1, chunk).astype(np.float32)
    reference = stream_torch(component, entry, chunks)
    test = stream_onnx(entry, onnx_path, chunks)
    atol, rtol = component.parity_tolerance[entry.precision]
    return compare_outputs(reference, test, atol=atol, rtol=rtol)
