"""Runners: one validated ``infer`` over a component of an engine package, per backend.

Backends import their heavy modules (onnxruntime, tensorrt, torch) lazily, inside the runner, so
that ``import edgevoice.backends`` costs nothing and never loads torch.
"""

from edgevoice.backends.base import Runner, StatefulStream

__all__ = ["BACKENDS", "Runner", "StatefulStream", "open_runner"]

BACKENDS = ("ort", "trt", "torch")


def open_runner(manifest, component: str, backend: str = "ort", device: str = "cpu", module=None,
                cuda_graphs: bool = True) -> Runner:
    """A runner for ``component`` of a verified package on ``backend`` ("ort", "trt" or "torch").

    The torch backend runs ``module``, the component's torch ``StreamingModule``, which the caller
    builds (``edgevoice.bench.torch_module`` makes it from the package's recipe).
    """
    from edgevoice.errors import EdgevoiceError

    spec = manifest.component(component)
    if backend == "ort":
        from edgevoice.backends.ort import OrtRunner

        return OrtRunner(spec, manifest.path(spec.onnx), device=device)
    if backend == "trt":
        from edgevoice.backends.trt import TrtOptions, TrtRunner

        return TrtRunner(spec, manifest, TrtOptions(cuda_graphs=cuda_graphs))
    if backend == "torch":
        if module is None:
            raise EdgevoiceError(
                f"the torch backend needs {component}'s torch module; build it with "
                "edgevoice.bench.torch_module(manifest, name) or use --backend ort"
            )
        from edgevoice.backends.torch import TorchOptions, TorchRunner

        return TorchRunner(spec, module, TorchOptions(device=device, cuda_graphs=cuda_graphs))
    raise EdgevoiceError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
