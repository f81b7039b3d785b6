"""Parity: the same streamed audio through the torch step and through onnxruntime.

Both sides are runners over the package's I/O contract (``TorchRunner`` on the CPU, the
reference; ``OrtRunner``), streamed and compared by ``edgevoice.backends.compare`` at every
step, states included; the result is the max abs error per output.
"""

from __future__ import annotations

from pathlib import Path

from edgevoice.backends.compare import compare_runners
from edgevoice.backends.ort import OrtRunner
from edgevoice.backends.torch import TorchRunner
from edgevoice.compare import Comparison
from edgevoice.manifest import Component
from edgevoice.recipes.base import RecipeComponent


def parity(component: RecipeComponent, entry: Component, onnx_path: Path) -> Comparison:
    """Run the component's parity feeds through torch and onnxruntime; compare every output at every step."""
    atol, rtol = component.parity_tolerance[entry.precision]
    reference = TorchRunner(entry, component.module)
    return compare_runners(reference, OrtRunner(entry, onnx_path), component.parity_feeds(), atol=atol, rtol=rtol)
