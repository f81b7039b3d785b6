"""What a recipe is to the exporter: named torch components and how to check them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgevoice.streaming import StreamingModule


@dataclass
class RecipeComponent:
    """One exportable component of a recipe."""

    name: str  # component name; the ONNX file is f"{name}.onnx"
    module: StreamingModule  # graph I/O names come from its input_specs/output_names/state_specs
    stream: dict[str, Any]  # facts for the runtime, e.g. chunk_samples, sample_rate, vocab size
    license: str  # license of the weights
    # Makes the step inputs (state excluded) that --verify feeds through torch and onnxruntime,
    # one dict per step, arrays with batch 1: () -> [{"chunk": (1, 512) float32}, ...]
    parity_feeds: Callable[[], list[dict[str, np.ndarray]]] | None = None
    # precision -> (atol, rtol) for torch vs onnxruntime parity. fp16 graphs round differently in
    # each backend and the error compounds through recurrent state, so they get a relative term.
    parity_tolerance: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"fp32": (1e-4, 0.0), "fp16": (1e-2, 1e-2)}
    )
    # Data files copied into the package for the runtime: name in the package -> source path.
    files: dict[str, Path] = field(default_factory=dict)
    # With stream["weights"] == "gguf": () -> the weights' integer codes (``weights.llm.gguf_blocks.BlockCodes``),
    # which the exporter writes in place of the float initializers they match.
    block_codes: Callable[[], list[Any]] | None = None


@dataclass(frozen=True)
class UpstreamCheck:
    """One part of a recipe against its upstream implementation on the same weights (``--verify``).

    ``run`` returns named measurements; each has its own limit in ``limits`` (a length, a
    probability and a logit error are not comparable, so no shared tolerance).
    """

    against: str  # what it is compared with, e.g. "faster-whisper (CTranslate2), same tiny.en weights"
    run: Callable[[], dict[str, float]]  # measurement name -> value
    limits: dict[str, float]  # measurement name -> the most it may be

    def failures(self, measured: dict[str, float]) -> list[str]:
        """'name value > limit' for every measurement over (or missing) its limit."""
        return [f"{name} {value:.3g} > {self.limits.get(name, 0.0):g}" for name, value in measured.items()
                if not value <= self.limits.get(name, 0.0)]


@dataclass
class Recipe:
    """A model as export sees it: its components, config, and its upstream reference checks."""

    name: str
    components: list[RecipeComponent]
    config: dict[str, Any]
    # Our torch ports against the implementations they port (e.g. Silero's own TorchScript model),
    # by part of the recipe ("vad", "asr", "llm", ...). Reported, and enforced, by --verify.
    upstream: dict[str, UpstreamCheck] = field(default_factory=dict)
    # Components whose graph is imported rather than exported from torch (e.g. a Piper voice):
    # builders called as build(out_dir, verify) that write their ONNX and describe it
    # (see recipes/cascade/piper.py: ImportedOnnxComponent).
    imported: list[Callable[[Path, bool], Any]] = field(default_factory=list)
