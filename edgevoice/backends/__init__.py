"""Runners: one validated ``infer`` over a component of an engine package, per backend.

Backends import their heavy modules (onnxruntime, tensorrt) lazily, inside the runner, so that
``import edgevoice.backends`` costs nothing and never loads torch.
"""

from edgevoice.backends.base import Runner, StatefulStream

__all__ = ["Runner", "StatefulStream", "open_runner"]


def open_runner(manifest, component: str, backend: str = "ort", device: str = "cpu") -> Runner:
    """A runner for ``component`` of a verified package on ``backend`` ("ort" or "trt")."""
    from edgevoice.errors import EdgevoiceError

    spec = manifest.component(component)
    if backend == "ort":
        from edgevoice.backends.ort import OrtRunner

        return OrtRunner(spec, manifest.path(spec.onnx), device=device)
    if backend == "trt":
        from edgevoice.backends.trt import TrtRunner

        return TrtRunner(spec, manifest)
    raise EdgevoiceError(f"unknown backend '{backend}'; choose one of: ort, trt")
