"""TensorRT runner: deserializes a package's engine and runs it with host numpy I/O.

Written against the TensorRT Python API of 10.3 (JetPack 6) and 11.x, with cuda-python for device
memory. The order matters: the GPU is checked before any TensorRT object exists (the lean runtime
segfaults without one), and the engine's TensorRT version and compute capability are checked
against this machine before deserializing.

This runner copies inputs and outputs through the host on every call; keeping state on the
device between steps (ping-pong buffers, CUDA graphs) comes with the GPU backends.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.backends.cuda import cuda_device_count, device_compute_capability
from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.manifest import Manifest, check_engine


def _import_tensorrt_stack() -> tuple[Any, Any]:
    if cuda_device_count() == 0:
        raise EdgevoiceError("the trt backend needs an NVIDIA GPU and none was found; use --backend ort")
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError.for_module("tensorrt", "trt", "the trt backend") from exc
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python before 12.8
        except ImportError as exc:
            raise MissingDependencyError.for_module("cuda-python", "trt", "the trt backend") from exc
    return tensorrt, cudart


def _check(result: tuple) -> Any:
    """cuda-python returns (err, *values); raise on an error, return the value(s)."""
    err, *values = result
    if int(getattr(err, "value", err)) != 0:
        raise RuntimeError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


class TrtRunner(Runner):
    backend = "trt"

    def __init__(self, component, manifest: Manifest):
        super().__init__(component)
        trt, self._cudart = _import_tensorrt_stack()
        check_engine(component, trt.__version__, device_compute_capability() or "unknown", f"edgevoice build {manifest.directory}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        plan = manifest.path(component.engine.file).read_bytes()
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EdgevoiceError(f"TensorRT could not load {component.engine.file}; rebuild it with `edgevoice build {manifest.directory}`")
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        pointer, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:  # grow only: steps reuse the same shapes, so this settles at once
            if pointer:
                _check(self._cudart.cudaFree(pointer))
            pointer = _check(self._cudart.cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        h2d = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, value in feeds.items():
            value = np.ascontiguousarray(value)
            pointer = self._device_buffer(name, value.nbytes)
            self._context.set_input_shape(name, value.shape)
            _check(self._cudart.cudaMemcpyAsync(pointer, value.ctypes.data, value.nbytes, h2d, self._stream))
            self._context.set_tensor_address(name, pointer)
        outputs = {}
        for spec in self.component.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            outputs[spec.name] = np.empty(shape, dtype=spec.dtype)
            pointer = self._device_buffer(spec.name, outputs[spec.name].nbytes)
            self._context.set_tensor_address(spec.name, pointer)
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError(f"TensorRT failed to run {self.component.name}")
        for name, array in outputs.items():
            pointer = self._buffers[name][0]
            _check(self._cudart.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, d2h, self._stream))
        _check(self._cudart.cudaStreamSynchronize(self._stream))
        return outputs

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        for pointer, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(pointer)
