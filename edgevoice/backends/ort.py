"""onnxruntime runner: CPU everywhere; CUDA and TensorRT execution providers where installed."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.manifest import Component

# Preference order on a GPU: TensorRT EP, then CUDA EP; CPU always closes the list.
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError.for_module("onnxruntime", "ort", "running ONNX graphs") from exc
    return onnxruntime


def choose_providers(available: list[str], device: str) -> list[str]:
    """Providers for ``device`` ("cpu", "cuda" or "auto") out of those onnxruntime offers."""
    if device not in ("cpu", "cuda", "auto"):
        raise EdgevoiceError(f"unknown device '{device}'; choose cpu, cuda or auto")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = [p for p in _GPU_PROVIDERS if p in available]
    if device == "cuda" and not gpu:
        raise EdgevoiceError(
            "device 'cuda' asked for, but this onnxruntime has no CUDA or TensorRT provider "
            f"(it has: {', '.join(available)}); install onnxruntime-gpu: pip install 'edgevoice[gpu]'"
        )
    return gpu + ["CPUExecutionProvider"]


class OrtRunner(Runner):
    backend = "ort"

    def __init__(self, component: Component, onnx_path: Path, device: str = "cpu", threads: int = 1):
        super().__init__(component)
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        # Streaming steps are tiny: one intra-op thread avoids thread wake-ups costing more than the
        # math, and no spinning keeps the audio thread's core free.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers(ort.get_available_providers(), device)
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.providers = self.session.get_providers()
        self._output_names = [o.name for o in component.outputs]

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, values))
