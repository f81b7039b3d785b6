"""What a recipe is to the exporter: named torch components and how to check them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgevoice.streaming import StreamingModule


@dataclass
class RecipeComponent:
    """One exportable component of a recipe."""

    name: str  # component name; the ONNX file is f"{name}.onnx"
    module: StreamingModule
    input_name: str  # graph name of the step's x
    output_name: str  # graph name of the step's y
    stream: dict[str, Any]  # frame facts for the runtime, e.g. chunk_samples, sample_rate
    license: str  # license of the weights
    # precision -> (atol, rtol) for torch vs onnxruntime parity. fp16 graphs round differently in
    # each backend and the error compounds through recurrent state, so they get a relative term.
    parity_tolerance: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"fp32": (1e-4, 0.0), "fp16": (1e-2, 1e-2)}
    )


@dataclass
class Recipe:
    """A model as export sees it: its components, config, and an upstream reference check."""

    name: str
    components: list[RecipeComponent]
    config: dict[str, Any]
    # Makes the audio that --verify streams through torch and onnxruntime: (seconds) -> mono PCM.
    verify_audio: Callable[[float], np.ndarray]
    # Optional: max abs difference of our torch components against the upstream implementation on
    # the given audio (e.g. Silero's own TorchScript model). Reported, and checked by --verify.
    upstream_check: Callable[[np.ndarray], float] | None = None
    upstream_atol: float = 1e-4
