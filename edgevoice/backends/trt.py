"""TensorRT runner: a package's engine run with the TensorRT 10.3+/11.x API and cuda-python.

The order matters: the GPU is checked before any TensorRT object exists (the lean runtime
segfaults without one), and the engine's TensorRT version and compute capability are checked
against this machine before deserializing (``manifest.check_engine`` names the rebuild command).

Per session (``stream()``) the runner makes one execution context and keeps the state on the
device: two sets of state buffers, the engine reads one and writes the other through
``set_tensor_address``, and the roles swap after each ``execute_async_v3`` (ping-pong, no copy).
With ``cuda_graphs`` each (input shapes, ping-pong side) is captured once after one plain run
and replayed with ``cudaGraphLaunch``. Engines that run one after another can share one
activation scratch (``SharedScratch``): their contexts are made without device memory and get
the shared block with ``set_device_memory``; sharing is only sound when their steps never overlap
in time, which holds for the pipelines' single stream per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.backends.cuda import cuda_device_count, device_compute_capability
from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.manifest import Manifest, check_engine


@dataclass(frozen=True)
class TrtOptions:
    cuda_graphs: bool = True  # capture one CUDA graph per input shape and ping-pong side, then replay


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
    return values[0] if len(values) == 1 else tuple(values) if values else None


class DeviceBuffer:
    """One cudaMalloc block that grows on demand; ``generation`` counts reallocations (graphs keep addresses)."""

    def __init__(self, cudart: Any):
        self.cudart, self.pointer, self.nbytes, self.generation = cudart, 0, 0, 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.pointer = _check(self.cudart.cudaMalloc(max(nbytes, 256)))
            self.nbytes, self.generation = nbytes, self.generation + 1
        return self.pointer

    def free(self) -> None:
        if self.pointer:
            self.cudart.cudaFree(self.pointer)
            self.pointer, self.nbytes = 0, 0


class SharedScratch:
    """One activation block for engines that run one after another (Jetson memory is shared with the CPU).

    Open every runner that shares it before the first step: the block is sized then, as the
    largest ``device_memory_size_v2`` among them.
    """

    def __init__(self):
        self.required, self._buffer = 0, None

    def register(self, engine: Any) -> None:
        size = int(getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size)
        if self._buffer is not None and size > self._buffer.nbytes:
            raise EdgevoiceError("a TensorRT runner joined a shared scratch after its first step; open all runners first")
        self.required = max(self.required, size)

    def attach(self, context: Any, cudart: Any) -> None:
        if self._buffer is None:
            self._buffer = DeviceBuffer(cudart)
            self._buffer.ensure(self.required)
        if hasattr(context, "set_device_memory"):  # 10.1+
            context.set_device_memory(self._buffer.pointer, self._buffer.nbytes)
        else:
            context.device_memory = self._buffer.pointer


class TrtRunner(Runner):
    backend = "trt"

    def __init__(self, component, manifest: Manifest, options: TrtOptions | None = None,
                 scratch: SharedScratch | None = None):
        super().__init__(component)
        self.options = options or TrtOptions()
        trt, self.cudart = _import_tensorrt_stack()  # the GPU is checked first, then TensorRT loads
        self.trt = trt
        fix = f"edgevoice build {manifest.directory}"
        check_engine(component, trt.__version__, device_compute_capability() or "unknown", fix)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(manifest.path(component.engine.file).read_bytes())
        if self.engine is None:
            raise EdgevoiceError(f"TensorRT could not load {component.engine.file}; rebuild it with `{fix}`")
        self._check_tensor_names(fix)
        self.scratch = scratch
        if scratch is not None:
            scratch.register(self.engine)
        self.cuda_stream = _check(self.cudart.cudaStreamCreate())
        self._host_session: TrtStream | None = None

    def _check_tensor_names(self, fix: str) -> None:
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        expected = {s.name for s in (*self.component.inputs, *self.component.outputs)}
        if names != expected:
            raise EdgevoiceError(f"{self.component.engine.file} does not match the manifest's tensors; rebuild it with `{fix}`")

    def new_context(self) -> Any:
        """One execution context (one per session); without its own memory when a scratch is shared."""
        if self.scratch is None:
            return self.engine.create_execution_context()
        strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
        if strategy is not None:
            context = self.engine.create_execution_context(strategy.USER_MANAGED)
        else:
            context = self.engine.create_execution_context_without_device_memory()
        self.scratch.attach(context, self.cudart)
        return context

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The stateless path: state comes in as host arrays and goes out as outputs.
        if self._host_session is None:
            self._host_session = TrtStream(self, batch_size=None)
        return self._host_session.run_all(feeds)

    def stream(self, batch_size: int = 1) -> "TrtStream":
        return TrtStream(self, batch_size)


class TrtStream:
    """One session: its own context, state in ping-pong device buffers, graphs per input shape."""

    def __init__(self, runner: TrtRunner, batch_size: int | None = 1):
        self.runner, self.batch_size = runner, batch_size
        self.cudart = runner.cudart
        self.context = runner.new_context()
        self.wiring = dict(runner.component.state)  # state output -> state input
        names = [s.name for s in (*runner.component.inputs, *runner.component.outputs)]
        self.buffers = {name: DeviceBuffer(self.cudart) for name in names if name not in self.wiring.values()}
        self.state_sides = [{}, {}]  # ping-pong: state input name -> DeviceBuffer
        self.side = 0  # which set holds the current state
        self._graphs: dict[tuple, Any] = {}
        self._seen: set[tuple] = set()
        if batch_size is not None:
            self.reset()

    def _state_buffer(self, side: int, name: str) -> DeviceBuffer:
        return self.state_sides[side].setdefault(name, DeviceBuffer(self.cudart))

    def reset(self) -> None:
        self.restore(self.runner.initial_state(self.batch_size))

    def restore(self, snapshot: Mapping[str, np.ndarray]) -> None:
        if set(snapshot) != set(self.wiring.values()):
            raise EdgevoiceError(f"snapshot holds {sorted(snapshot)}, the stream keeps {sorted(self.wiring.values())}")
        for name, value in snapshot.items():
            value = np.ascontiguousarray(value)
            for side in (0, 1):
                self._state_buffer(side, name).ensure(value.nbytes)
            self._h2d(self._state_buffer(self.side, name).pointer, value)
        self._shapes = {name: np.asarray(v).shape for name, v in snapshot.items()}
        _check(self.cudart.cudaStreamSynchronize(self.runner.cuda_stream))

    def snapshot(self) -> dict[str, np.ndarray]:
        out = {}
        for name, shape in self._shapes.items():
            out[name] = np.empty(shape, dtype=self.runner.component.input(name).dtype)
            self._d2h(out[name], self._state_buffer(self.side, name).pointer)
        _check(self.cudart.cudaStreamSynchronize(self.runner.cuda_stream))
        return out

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runner._validate(feeds, state_held=True)
        key = self._bind(feeds, self.side)
        self._launch(key)
        outputs = self._fetch_step_outputs()
        self.side = 1 - self.side  # the outputs just written are now the state
        return outputs

    def run_all(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stateless call (``Runner.infer``): state inputs come from ``feeds``, state outputs are returned."""
        state = {n: feeds[n] for n in self.wiring.values()}
        self.restore(state)
        key = self._bind({n: v for n, v in feeds.items() if n not in state}, self.side)
        self._launch(key, allow_graph=False)
        outputs = self._fetch_step_outputs()
        for out_name, in_name in self.wiring.items():
            array = np.empty(self._shapes[in_name], dtype=self.runner.component.output(out_name).dtype)
            self._d2h(array, self._state_buffer(1 - self.side, in_name).pointer)
            outputs[out_name] = array
        _check(self.cudart.cudaStreamSynchronize(self.runner.cuda_stream))
        return outputs

    def _bind(self, feeds: Mapping[str, np.ndarray], side: int) -> tuple:
        context = self.context
        for name, value in feeds.items():
            value = np.ascontiguousarray(value)
            context.set_input_shape(name, value.shape)
            self._h2d(self.buffers[name].ensure(value.nbytes), value)
            context.set_tensor_address(name, self.buffers[name].pointer)
        for out_name, in_name in self.wiring.items():
            context.set_input_shape(in_name, self._shapes[in_name])
            context.set_tensor_address(in_name, self._state_buffer(side, in_name).pointer)
            context.set_tensor_address(out_name, self._state_buffer(1 - side, in_name).pointer)
        for spec in self.runner.component.outputs:
            if spec.name in self.wiring:
                continue
            nbytes = int(np.prod(tuple(context.get_tensor_shape(spec.name)))) * np.dtype(spec.dtype).itemsize
            context.set_tensor_address(spec.name, self.buffers[spec.name].ensure(nbytes))
        generations = tuple(b.generation for b in self.buffers.values())
        return tuple(sorted((n, np.shape(v)) for n, v in feeds.items())), side, generations

    def _launch(self, key: tuple, allow_graph: bool = True) -> None:
        stream = self.runner.cuda_stream
        graph = self._graphs.get(key)
        if graph is not None:
            _check(self.cudart.cudaGraphLaunch(graph, stream))
            return
        use_graph = allow_graph and self.runner.options.cuda_graphs and key in self._seen
        if use_graph:
            # The plain run before (key seen) flushed TensorRT's deferred setup; now capture, then launch.
            self._graphs[key] = self._capture(stream)
            _check(self.cudart.cudaGraphLaunch(self._graphs[key], stream))
            return
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT failed to run {self.runner.component.name}")
        self._seen.add(key)

    def _capture(self, stream: Any) -> Any:
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(self.cudart.cudaStreamBeginCapture(stream, mode))
        ok = self.context.execute_async_v3(stream)
        graph = _check(self.cudart.cudaStreamEndCapture(stream))
        if not ok:
            raise RuntimeError(f"TensorRT failed to capture {self.runner.component.name} in a CUDA graph")
        return _check(self.cudart.cudaGraphInstantiate(graph, 0))

    def _fetch_step_outputs(self) -> dict[str, np.ndarray]:
        outputs = {}
        for spec in self.runner.component.outputs:
            if spec.name in self.wiring:
                continue
            array = np.empty(tuple(self.context.get_tensor_shape(spec.name)), dtype=spec.dtype)
            self._d2h(array, self.buffers[spec.name].pointer)
            outputs[spec.name] = array
        _check(self.cudart.cudaStreamSynchronize(self.runner.cuda_stream))
        return outputs

    def _h2d(self, pointer: int, array: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, self.runner.cuda_stream))

    def _d2h(self, array: np.ndarray, pointer: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self.cudart.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, self.runner.cuda_stream))

    def __del__(self) -> None:
        for graph in getattr(self, "_graphs", {}).values():
            self.cudart.cudaGraphExecDestroy(graph)
        for buffer in [*getattr(self, "buffers", {}).values(), *(b for s in getattr(self, "state_sides", []) for b in s.values())]:
            buffer.free()
