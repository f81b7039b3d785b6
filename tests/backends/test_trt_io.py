"""The TensorRT runner's bookkeeping on a CPU: fake engine, context and CUDA runtime objects.

What a real GPU must confirm (the same paths through TensorRT itself) is marked ``trt`` in
test_backends_ext.py; these tests pin the logic: engine I/O against the manifest, refused input
shapes, CUDA graphs keyed on every bound address (and freed), data-dependent outputs.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from edgevoice.backends.trt import TrtOptions, TrtRunner, TrtStream
from edgevoice.backends.trt_io import GraphCache, check_engine_io, data_dependent_outputs
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component, DimRange, TensorSpec

_NP_TO_TRT = {"float32": "DataType.FLOAT", "float16": "DataType.HALF", "int64": "DataType.INT64"}


def component(data_dependent: bool = False) -> Component:
    outputs = [TensorSpec("y", "float32", ("batch", 4)), TensorSpec("h_out", "float32", ("batch", 8))]
    if data_dependent:
        outputs[0] = TensorSpec("y", "float32", ("batch", "samples"))  # 'samples' is no named dim
    return Component(
        name="step", onnx="step.onnx", opset=20, precision="fp32",
        inputs=(TensorSpec("x", "float32", ("batch", 4)), TensorSpec("h", "float32", ("batch", 8))),
        outputs=tuple(outputs), dynamic_dims={"batch": DimRange(1, 1, 2)}, state={"h_out": "h"},
        initial_state={"h": "zeros"}, stream={}, license="MIT",
    )


class FakeEngine:
    """The ICudaEngine calls the runner makes, answered from a component (optionally altered)."""

    def __init__(self, comp: Component, **changes):
        self.tensors = {s.name: ["INPUT", s.dtype, [-1 if isinstance(d, str) else d for d in s.shape]]
                        for s in comp.inputs}
        self.tensors |= {s.name: ["OUTPUT", s.dtype, [-1 if isinstance(d, str) else d for d in s.shape]]
                         for s in comp.outputs}
        for name, (field, value) in changes.items():
            self.tensors[name][field] = value
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return SimpleNamespace(name=self.tensors[name][0])

    def get_tensor_dtype(self, name):
        return _NP_TO_TRT.get(self.tensors[name][1], self.tensors[name][1])

    def get_tensor_shape(self, name):
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name, profile):
        low, high = [[1 if d == -1 else d for d in self.tensors[name][2]], [2 if d == -1 else d for d in self.tensors[name][2]]]
        return [low, low, high]


def test_engine_io_matches_its_manifest():
    check_engine_io(FakeEngine(component()), component(), "edgevoice build pkg")
    check_engine_io(FakeEngine(component(True)), component(True), "edgevoice build pkg")


@pytest.mark.parametrize("changes, needle", [
    ({"x": (1, "float16")}, "'x' is float16 in the engine, float32 in the manifest"),
    ({"h": (2, [-1, 16])}, "'h' has shape (-1, 16) in the engine, (batch, 8) in the manifest"),
    ({"y": (2, [-1, 4, 1])}, "'y' has shape (-1, 4, 1)"),
    ({"y": (0, "INPUT")}, "'y' is an input of the engine but an output in the manifest"),
])
def test_engine_io_mismatch_is_one_line(changes, needle):
    with pytest.raises(EdgevoiceError) as info:
        check_engine_io(FakeEngine(component(), **changes), component(), "edgevoice build pkg")
    message = str(info.value)
    assert needle in message and "edgevoice build pkg" in message and "\n" not in message


def test_engine_with_other_tensor_names_is_refused():
    engine = FakeEngine(component())
    engine.tensors["extra"] = engine.tensors.pop("y")
    with pytest.raises(EdgevoiceError, match=r"missing from the engine \['y'\], not in the manifest \['extra'\]"):
        check_engine_io(engine, component(), "fix")


def test_data_dependent_outputs_are_the_unnamed_dims():
    assert data_dependent_outputs(component()) == ()
    assert data_dependent_outputs(component(True)) == ("y",)


def test_graph_cache_keys_on_addresses_and_prunes_freed_ones():
    destroyed = []
    cache = GraphCache(destroyed.append)
    a = GraphCache.key({"x": (1, 4)}, {"x": 100, "h": 200})
    b = GraphCache.key({"x": (1, 4)}, {"x": 100, "h": 300})
    assert a != b and a == GraphCache.key({"x": (1, 4)}, {"h": 200, "x": 100})
    assert not cache.seen(a) and cache.seen(a)
    cache.put(a, "exec-a")
    cache.put(b, "exec-b")
    assert cache.prune([100, 300]) == 1 and destroyed == ["exec-a"] and cache.get(a) is None
    assert not cache.seen(a)  # a freed address starts over: plain run first
    cache.clear()
    assert destroyed == ["exec-a", "exec-b"] and len(cache) == 0


# --- TrtStream against a fake TensorRT context and CUDA runtime ---------------------------------


class FakeCudart:
    """cuda-python's (err, value) answers; cudaMalloc hands out fresh addresses, never reused."""

    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal=0)

    def __init__(self):
        self.addresses = itertools.count(0x1000, 0x1000)
        self.freed, self.launched, self.graphs_destroyed, self.execs_destroyed = [], [], [], []
        self.captures = itertools.count()

    def cudaMalloc(self, n):
        if n > 1 << 40:
            return 2, None  # cudaErrorMemoryAllocation
        return 0, next(self.addresses)

    def cudaFree(self, p):
        self.freed.append(p)
        return (0,)

    def cudaMemcpyAsync(self, *args):
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        return (0,)

    def cudaStreamEndCapture(self, stream):
        return 0, f"graph{next(self.captures)}"

    def cudaGraphInstantiate(self, graph, flags):
        return 0, "exec-" + graph

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launched.append(graph_exec)
        return (0,)

    def cudaGraphDestroy(self, graph):
        self.graphs_destroyed.append(graph)

    def cudaGraphExecDestroy(self, graph_exec):
        self.execs_destroyed.append(graph_exec)


class FakeContext:
    def __init__(self, engine, samples=100, allocation_fails=False):
        self.engine, self.shapes, self.addresses, self.allocators = engine, {}, {}, {}
        self.samples, self.allocation_fails, self.runs, self.profile = samples, allocation_fails, 0, 0

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return 1 <= shape[0] <= 2  # the profile's batch range

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def get_tensor_shape(self, name):
        batch = self.shapes["x"][0]
        return [batch if d == -1 else d for d in self.engine.get_tensor_shape(name)]

    def set_output_allocator(self, name, allocator):
        self.allocators[name] = allocator
        return True

    def execute_async_v3(self, stream):
        self.runs += 1
        for name, allocator in self.allocators.items():
            size = 1 << 41 if self.allocation_fails else self.samples * 4
            if allocator.reallocate_output_async(name, 0, size, 256, stream) is not None:
                allocator.notify_shape(name, (1, self.samples))
        return True


class FakeAllocatorBase:
    def __init__(self):
        pass


def fake_runner(comp: Component, cuda_graphs: bool = True, **context_options) -> TrtRunner:
    """A TrtRunner wired to fakes, as ``TrtRunner.__init__`` would after loading an engine."""
    runner = TrtRunner.__new__(TrtRunner)
    runner.component, runner.options = comp, TrtOptions(cuda_graphs=cuda_graphs)
    runner.cudart, runner.trt = FakeCudart(), SimpleNamespace(IOutputAllocator=FakeAllocatorBase)
    runner.engine = FakeEngine(comp)
    runner.data_dependent = data_dependent_outputs(comp)
    runner.graphs_allowed = cuda_graphs and not runner.data_dependent
    runner.cuda_stream = runner.stream_handle = 7
    runner._host_session = None
    runner.lock = threading.RLock()
    runner.new_context = lambda profile=0: TrtRunner.new_context(runner, profile)
    runner.engine.create_execution_context = lambda: FakeContext(runner.engine, **context_options)
    return runner


def step(stream: TrtStream, batch: int = 1) -> dict:
    return stream({"x": np.zeros((batch, 4), np.float32)})


def test_graphs_are_captured_per_side_replayed_and_their_graph_freed():
    runner = fake_runner(component())
    stream = runner.stream()
    for _ in range(6):
        step(stream)
    cudart = runner.cudart
    assert stream.context.runs == 4  # per ping-pong side: one plain run, one under capture; then replays
    assert cudart.launched == ["exec-graph0", "exec-graph1", "exec-graph0", "exec-graph1"]
    assert cudart.graphs_destroyed == ["graph0", "graph1"]  # the cudaGraph_t, not only the exec


def test_restore_that_reallocates_state_never_replays_the_old_graphs():
    runner = fake_runner(component())
    stream = runner.stream()
    for _ in range(4):
        step(stream)
    old = dict(stream.context.addresses)
    stream.restore({"h": np.zeros((2, 8), np.float32)})  # bigger: the state buffers move
    for _ in range(4):
        step(stream, batch=2)
    cudart = runner.cudart
    assert stream.context.addresses["h"] != old["h"]
    assert {"exec-graph0", "exec-graph1"} <= set(cudart.execs_destroyed)  # stale graphs destroyed
    assert cudart.launched[2:] == ["exec-graph2", "exec-graph3"]  # fresh captures, not the old ones


def test_a_refused_input_shape_names_tensor_shape_and_profile():
    wider = dataclasses.replace(component(), dynamic_dims={"batch": DimRange(1, 1, 4)})  # than the engine's 1..2
    stream = fake_runner(wider).stream()
    with pytest.raises(EdgevoiceError) as info:
        stream.restore({"h": np.zeros((3, 8), np.float32)})
        step(stream, batch=3)
    message = str(info.value)
    assert "'x' with shape (3, 4)" in message and "(1, 4) to (2, 4)" in message


def test_data_dependent_output_uses_the_allocator_and_no_graph():
    runner = fake_runner(component(True), samples=123)
    stream = runner.stream()
    for _ in range(5):
        out = step(stream)
    assert out["y"].shape == (1, 123)
    assert stream.context.runs == 5 and runner.cudart.launched == []
    assert set(stream.context.allocators) == {"y"} and "y" not in stream.context.addresses


def test_a_failed_output_allocation_is_one_user_error():
    stream = fake_runner(component(True), allocation_fails=True).stream()
    with pytest.raises(EdgevoiceError, match=f"could not allocate {1 << 41} bytes for output 'y'"):
        step(stream)


def llm_like_component() -> Component:
    """One graph with a dynamic token dim and two declared profiles, as the cascade's ``llm``."""
    profiles = [{"name": "prefill", "dims": {"tokens": [1, 16, 64]}}, {"name": "decode", "dims": {"tokens": [1, 1, 1]}}]
    return Component(
        name="llm", onnx="llm.onnx", opset=20, precision="fp32",
        inputs=(TensorSpec("x", "float32", ("batch", "tokens")), TensorSpec("h", "float32", ("batch", 8))),
        outputs=(TensorSpec("y", "float32", ("batch", 4)), TensorSpec("h_out", "float32", ("batch", 8))),
        dynamic_dims={"batch": DimRange(1, 1, 1), "tokens": DimRange(1, 16, 64)}, state={"h_out": "h"},
        initial_state={"h": "zeros"}, stream={"trt_profiles": profiles}, license="MIT",
    )


def test_each_call_runs_on_the_narrowest_profile_that_holds_it():
    runner = fake_runner(llm_like_component())
    runner.engine.num_optimization_profiles = 2  # as `edgevoice build` makes it
    stream = runner.stream()
    chunk, token = np.zeros((1, 16), np.float32), np.zeros((1, 1), np.float32)
    stream({"x": chunk})
    assert stream.profile == 0 and set(stream.contexts) == {0}  # a prompt chunk: the prefill profile
    for _ in range(4):
        stream({"x": token})
    assert stream.profile == 1 and stream.contexts[1].profile == 1  # one token: the decode profile's context
    # per ping-pong side a plain run, then one under capture (replayed after): graphs of this context only
    assert stream.contexts[1].runs == 4 and runner.cudart.launched == ["exec-graph0", "exec-graph1"]
    stream({"x": chunk})
    assert stream.profile == 0 and stream.contexts[0].runs == 2  # back on prefill: its own context
    assert runner.profile_for({"x": np.zeros((1, 65), np.float32)}) == 0  # nothing fits: profile 0 says why
    runner.engine.num_optimization_profiles = 1  # built by build.sh (trtexec): profile 0 only
    assert runner.profile_for({"x": token}) == 0


def test_conversations_on_threads_take_turns_on_one_engine():
    """Two sessions' streams over one engine, called from two threads: never two launches at once
    (one CUDA stream per engine; a graph capture must not see another thread's launch)."""
    runner = fake_runner(component(), cuda_graphs=False)
    running, overlaps = [0], []
    make_context = runner.engine.create_execution_context

    def watched_context():
        context = make_context()
        execute = context.execute_async_v3

        def execute_alone(stream):
            running[0] += 1
            overlaps.append(running[0])
            time.sleep(0.002)  # long enough for the other thread to try
            running[0] -= 1
            return execute(stream)

        context.execute_async_v3 = execute_alone
        return context

    runner.engine.create_execution_context = watched_context
    streams = [runner.stream(1), runner.stream(1)]
    threads = [threading.Thread(target=lambda s=s: [step(s) for _ in range(20)]) for s in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 40 and max(overlaps) == 1
