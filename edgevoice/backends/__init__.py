"""Runners: one validated ``infer`` over a component of an engine package, per backend.

Backends import their heavy modules (onnxruntime, tensorrt, torch) lazily, inside the runner, so
that ``import edgevoice.backends`` costs nothing and never loads torch.
"""

from edgevoice.backends.base import Runner, StatefulStream

__all__ = ["BACKENDS", "Runner", "StatefulStream", "open_runner"]

BACKENDS = ("ort", "trt", "torch")


def open_runner(manifest, component: str, backend: str = "ort", device: str = "cpu", module=None,
                cuda_graphs: bool = True, threads: int | None = None) -> Runner:
    """A runner for ``component`` of a verified package on ``backend`` ("ort", "trt" or "torch").

    ``threads`` (onnxruntime on the CPU): intra-op threads; by default one for small streaming
    steps, where waking threads costs more than the math (the VAD), and every core up to four for
    graphs with tens of megabytes of weights, whose single call sits on a turn's critical path
    (Whisper's encoder: 0.46 s on one core, 0.23 s on two, measured).

    The torch backend runs ``module``, the component's torch ``StreamingModule``, which the caller
    builds (``edgevoice.bench.torch_module`` makes it from the package's recipe).
    """
    from edgevoice.errors import EdgevoiceError

    spec = manifest.component(component)
    if backend == "ort":
        from edgevoice.backends.ort import OrtRunner

        path = manifest.path(spec.onnx)
        return OrtRunner(spec, path, device=device, threads=threads or default_threads(path))
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


HEAVY_GRAPH_BYTES = 16 << 20  # graphs above this get several CPU threads


def default_threads(onnx_path) -> int:
    import os
    from pathlib import Path

    if Path(onnx_path).stat().st_size < HEAVY_GRAPH_BYTES:
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
