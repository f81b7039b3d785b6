"""TensorRT runner: a package's engine run with the TensorRT 10.3+/11.x API and cuda-python.

The order matters: the GPU is checked before any TensorRT object exists (the lean runtime
segfaults without one), and the engine's TensorRT version and compute capability are checked
against this machine before deserializing (``manifest.check_engine`` names the rebuild command).

Per session (``stream()``) the runner makes one execution context per optimization profile it
uses (most engines have one; the cascade's LLM has a prefill and a decode profile, and each call
runs on the narrowest profile that holds its shapes) and keeps the state on the device: two sets of state buffers, the engine reads one and writes the other through
``set_tensor_address``, and the roles swap after each ``execute_async_v3`` (ping-pong, no copy).
With ``cuda_graphs`` each (input shapes, bound addresses) is captured once after one plain run
and replayed with ``cudaGraphLaunch``; the key holds every address bound to the context (the
ping-pong side, buffers grown, state reallocated by ``restore``), since a graph replays exactly
the addresses it was captured with. Outputs whose length the run computes (a voice's samples)
get a ``trt.IOutputAllocator`` instead of a preallocated buffer; TensorRT allocates through it
during the run, which a CUDA graph cannot replay, so such engines run without graphs.
The bookkeeping that needs no GPU lives in ``edgevoice.backends.trt_io``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.backends.cuda import cuda_device_count, device_compute_capability
from edgevoice.backends.trt_io import GraphCache, check_engine_io, data_dependent_outputs, input_shape_error
from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.manifest import Manifest, check_engine


@dataclass(frozen=True)
class TrtOptions:
    cuda_graphs: bool = True  # capture one CUDA graph per input shapes and bound addresses, then replay


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


def _output_allocator(trt: Any, cudart: Any) -> Any:
    """A ``trt.IOutputAllocator`` for outputs whose size only the run knows (TensorRT 8.5+ API).

    TensorRT calls ``reallocate_output_async`` (10.x; ``reallocate_output`` before) with the bytes
    it needs and ``notify_shape`` with the final shape. Exceptions cannot cross back into
    TensorRT's C++, so a failure is kept in ``error`` and raised by the caller after the run.
    """

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)  # pybind11 needs the base initialised explicitly
            self.buffers: dict[str, DeviceBuffer] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.error: str | None = None

        def reallocate_output(self, tensor_name, memory, size, alignment):
            return self._grow(tensor_name, size)

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self._grow(tensor_name, size)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

        def _grow(self, name: str, size: int):
            try:
                return self.buffers.setdefault(name, DeviceBuffer(cudart)).ensure(max(int(size), 1))
            except Exception as exc:  # noqa: BLE001 - reported after the run, see the docstring
                self.error = f"could not allocate {int(size)} bytes for output '{name}' ({exc})"
                return None  # TensorRT's documented answer for "cannot allocate"

    return OutputAllocator()


class TrtRunner(Runner):
    backend = "trt"

    def __init__(self, component, manifest: Manifest, options: TrtOptions | None = None):
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
        check_engine_io(self.engine, component, fix)  # names, modes, dtypes, shapes: one line at open
        self.data_dependent = data_dependent_outputs(component)
        # TensorRT allocates data-dependent outputs during the run: not capturable in a graph.
        self.graphs_allowed = self.options.cuda_graphs and not self.data_dependent
        self.cuda_stream = _check(self.cudart.cudaStreamCreate())
        # One CUDA stream per engine, and one host session for stateless calls: the conversations of a
        # server call from their own threads, so their calls take turns (a capture in progress on the
        # stream must not see another thread's launch). Batching is how they share a call instead.
        self.lock = threading.RLock()
        self.stream_handle = int(self.cuda_stream)  # execute_async_v3 takes the raw handle, not the wrapper
        self._host_session: TrtStream | None = None

    @property
    def profiles(self) -> list[dict[str, Any]]:
        """The engine's optimization profiles as the manifest declares them (``stream["trt_profiles"]``,
        in build order); empty: one profile, the component's dynamic dims."""
        return list(self.component.stream.get("trt_profiles") or [])

    def new_context(self, profile: int = 0) -> Any:
        """An execution context on optimization profile ``profile`` (one per profile a session uses)."""
        context = self.engine.create_execution_context()
        if profile and not context.set_optimization_profile_async(profile, self.stream_handle):
            raise EdgevoiceError(f"{self.component.name}: TensorRT refused optimization profile {profile}; "
                                 f"rebuild the engine with `edgevoice build`")
        return context

    def profile_for(self, feeds: Mapping[str, np.ndarray]) -> int:
        """The profile a call runs on: the narrowest declared one whose ranges hold the feeds' dims.

        The cascade's LLM declares prefill (tokens 1..64) then decode (tokens 1): a one-token step
        runs on the decode profile's kernels, a prompt chunk on the prefill profile's.
        """
        # An engine from build.sh (trtexec) holds profile 0 only: it runs every call.
        profiles = self.profiles[: getattr(self.engine, "num_optimization_profiles", 1)]
        if len(profiles) < 2:
            return 0
        dims = {}
        for spec in self.component.inputs:
            if spec.name in feeds:
                dims |= {d: n for d, n in zip(spec.shape, np.shape(feeds[spec.name])) if isinstance(d, str)}
        fitting = [(sum(hi - lo for lo, _, hi in p["dims"].values()), i) for i, p in enumerate(profiles)
                   if all(lo <= dims.get(d, lo) <= hi for d, (lo, _, hi) in p["dims"].items())]
        return min(fitting)[1] if fitting else 0  # none fits: profile 0 refuses the shape with its reason

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The stateless path: state comes in as host arrays and goes out as outputs.
        with self.lock:
            if self._host_session is None:
                self._host_session = TrtStream(self, batch_size=None)
            return self._host_session.run_all(feeds)

    def stream(self, batch_size: int = 1) -> "TrtStream":
        return TrtStream(self, batch_size)


class TrtStream:
    """One session: its own context, state in ping-pong device buffers, graphs per bound addresses."""

    def __init__(self, runner: TrtRunner, batch_size: int | None = 1):
        self.runner, self.batch_size = runner, batch_size
        self.cudart = runner.cudart
        self.contexts = {0: runner.new_context()}  # profile -> its context, made when first needed
        self.profile = 0  # the profile of the current call
        self.wiring = dict(runner.component.state)  # state output -> state input
        names = [s.name for s in (*runner.component.inputs, *runner.component.outputs)]
        skip = {*self.wiring.values(), *runner.data_dependent}
        self.buffers = {name: DeviceBuffer(self.cudart) for name in names if name not in skip}
        self.state_sides = [{}, {}]  # ping-pong: state input name -> DeviceBuffer
        self.side = 0  # which set holds the current state
        self.graphs = GraphCache(self._destroy_graph)
        self.allocator = _output_allocator(runner.trt, self.cudart) if runner.data_dependent else None
        if self.allocator is not None:
            self._attach_allocator(self.context)
        if batch_size is not None:
            self.reset()

    @property
    def context(self) -> Any:
        return self.contexts[self.profile]

    def _use_profile(self, profile: int) -> None:
        if profile not in self.contexts:
            self.contexts[profile] = self.runner.new_context(profile)
            if self.allocator is not None:
                self._attach_allocator(self.contexts[profile])
        self.profile = profile

    def _attach_allocator(self, context: Any) -> None:
        allocator = self.allocator
        for name in self.runner.data_dependent:
            if not context.set_output_allocator(name, allocator):
                raise EdgevoiceError(f"{self.runner.component.name}: TensorRT refused an output allocator for "
                                     f"'{name}' (needs TensorRT 8.5 or newer); use --backend ort")

    def _state_buffer(self, side: int, name: str) -> DeviceBuffer:
        return self.state_sides[side].setdefault(name, DeviceBuffer(self.cudart))

    def reset(self) -> None:
        self.restore(self.runner.initial_state(self.batch_size))

    def restore(self, snapshot: Mapping[str, np.ndarray]) -> None:
        with self.runner.lock:
            self._restore(snapshot)

    def _restore(self, snapshot: Mapping[str, np.ndarray]) -> None:
        if set(snapshot) != set(self.wiring.values()):
            raise EdgevoiceError(f"snapshot holds {sorted(snapshot)}, the stream keeps {sorted(self.wiring.values())}")
        for name, value in snapshot.items():
            value = np.ascontiguousarray(value)
            for side in (0, 1):
                self._state_buffer(side, name).ensure(value.nbytes)  # may move: the graph key sees it
            self._h2d(self._state_buffer(self.side, name).pointer, value)
        self._shapes = {name: np.asarray(v).shape for name, v in snapshot.items()}
        _check(self.cudart.cudaStreamSynchronize(self.runner.cuda_stream))

    def snapshot(self) -> dict[str, np.ndarray]:
        out = {}
        with self.runner.lock:
            for name, shape in self._shapes.items():
                out[name] = np.empty(shape, dtype=self.runner.component.input(name).dtype)
                self._d2h(out[name], self._state_buffer(self.side, name).pointer)
            _check(self.cudart.cudaStreamSynchronize(self.runner.cuda_stream))
        return out

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runner._validate(feeds, state_held=True)
        with self.runner.lock:
            self._use_profile(self.runner.profile_for(feeds))
            key = self._bind(feeds, self.side)
            self._launch(key, allow_graph=self.runner.graphs_allowed)
            outputs = self._fetch_step_outputs()
            self.side = 1 - self.side  # the outputs just written are now the state
        return outputs

    def run_all(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stateless call (``Runner.infer``): state inputs come from ``feeds``, state outputs are returned."""
        state = {n: feeds[n] for n in self.wiring.values()}
        self._use_profile(self.runner.profile_for(feeds))
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

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        # False (not an exception) is how TensorRT says the shape is outside the profile.
        if not self.context.set_input_shape(name, tuple(shape)):
            raise input_shape_error(self.runner.component, name, shape, self.runner.engine)

    def _bind(self, feeds: Mapping[str, np.ndarray], side: int) -> tuple:
        """Set shapes and addresses of every tensor; return the graph key (shapes + all addresses)."""
        context, bound = self.context, {}
        for name, value in feeds.items():
            value = np.ascontiguousarray(value)
            self._set_shape(name, value.shape)
            self._h2d(self.buffers[name].ensure(value.nbytes), value)
            bound[name] = self.buffers[name].pointer
        for out_name, in_name in self.wiring.items():
            self._set_shape(in_name, self._shapes[in_name])
            bound[in_name] = self._state_buffer(side, in_name).pointer
            bound[out_name] = self._state_buffer(1 - side, in_name).pointer
        for spec in self.runner.component.outputs:
            if spec.name in self.wiring or spec.name in self.runner.data_dependent:
                continue  # state is bound above; data-dependent outputs go through the allocator
            nbytes = int(np.prod(tuple(context.get_tensor_shape(spec.name)))) * np.dtype(spec.dtype).itemsize
            bound[spec.name] = self.buffers[spec.name].ensure(nbytes)
        for name, address in bound.items():
            if not context.set_tensor_address(name, address):
                raise EdgevoiceError(f"{self.runner.component.name}: TensorRT refused the address of '{name}'")
        self.graphs.prune(self._live_addresses())  # graphs bound to freed memory must never replay
        # A graph replays one context's launch: the profile is part of its key (beside the shapes).
        return GraphCache.key({**{n: np.shape(v) for n, v in feeds.items()}, "<profile>": (self.profile,)}, bound)

    def _live_addresses(self) -> list[int]:
        held = [*self.buffers.values(), *(b for side in self.state_sides for b in side.values())]
        return [b.pointer for b in held if b.pointer]

    def _launch(self, key: tuple, allow_graph: bool) -> None:
        stream = self.runner.cuda_stream
        graph = self.graphs.get(key) if allow_graph else None
        if graph is None and allow_graph and self.graphs.seen(key):
            # The plain run before (key seen) flushed TensorRT's deferred setup; now capture.
            graph = self._capture(stream)
            self.graphs.put(key, graph)
        if graph is not None:
            _check(self.cudart.cudaGraphLaunch(graph, stream))
            return
        if not self.context.execute_async_v3(self.runner.stream_handle):
            raise EdgevoiceError(f"TensorRT failed to run {self.runner.component.name} (its log above says why); "
                                 "try --backend ort to rule the engine out")
        if self.allocator is not None and self.allocator.error:
            raise EdgevoiceError(f"{self.runner.component.name}: {self.allocator.error}")

    def _capture(self, stream: Any) -> Any:
        """Capture one step and return its executable graph; the captured cudaGraph_t is freed here."""
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(self.cudart.cudaStreamBeginCapture(stream, mode))
        ok = self.context.execute_async_v3(self.runner.stream_handle)
        graph = _check(self.cudart.cudaStreamEndCapture(stream))
        try:
            if not ok:
                raise EdgevoiceError(f"TensorRT could not run {self.runner.component.name} inside a CUDA graph; "
                                     "pass cuda_graphs=False")
            return _check(self.cudart.cudaGraphInstantiate(graph, 0))
        finally:
            self.cudart.cudaGraphDestroy(graph)  # the executable keeps its own copy

    def _destroy_graph(self, graph_exec: Any) -> None:
        self.cudart.cudaGraphExecDestroy(graph_exec)

    def _fetch_step_outputs(self) -> dict[str, np.ndarray]:
        outputs = {}
        for spec in self.runner.component.outputs:
            if spec.name in self.wiring:
                continue
            shape, pointer = self._output_location(spec.name)
            array = np.empty(shape, dtype=spec.dtype)
            if array.size:
                self._d2h(array, pointer)
            outputs[spec.name] = array
        _check(self.cudart.cudaStreamSynchronize(self.runner.cuda_stream))
        return outputs

    def _output_location(self, name: str) -> tuple[tuple[int, ...], int]:
        if name not in self.runner.data_dependent:
            return tuple(self.context.get_tensor_shape(name)), self.buffers[name].pointer
        shape = self.allocator.shapes.get(name)
        buffer = self.allocator.buffers.get(name)
        if shape is None or (buffer is None and 0 not in shape):
            raise EdgevoiceError(f"{self.runner.component.name}: TensorRT reported no shape or memory for output "
                                 f"'{name}' after the run; rebuild the engine with `edgevoice build`")
        return shape, buffer.pointer if buffer is not None else 0

    def _h2d(self, pointer: int, array: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, self.runner.cuda_stream))

    def _d2h(self, array: np.ndarray, pointer: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self.cudart.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, self.runner.cuda_stream))

    def __del__(self) -> None:
        graphs = getattr(self, "graphs", None)
        if graphs is not None:
            graphs.clear()
        allocator = getattr(self, "allocator", None)
        held = [*getattr(self, "buffers", {}).values(), *(b for s in getattr(self, "state_sides", []) for b in s.values())]
        for buffer in held + (list(allocator.buffers.values()) if allocator is not None else []):
            buffer.free()
