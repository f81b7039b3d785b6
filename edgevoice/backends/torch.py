"""torch runner: a component's own ``StreamingModule`` behind the Runner base.

It is the reference path (the module the ONNX graph was exported from) and, on a GPU without
TensorRT, the fast path. The caller builds the module (``edgevoice.bench.torch_module`` does it
from the package's recipe): backends never import recipes or models, and torch itself is
imported only when a TorchRunner is made, so the engine-only runtime never loads it.

On CUDA a stream keeps the state in static device buffers and, with ``cuda_graphs``, captures
one CUDA graph per distinct input shape the way moshi's ``CUDAGraphed`` does: a few eager
warm-up steps on a side stream (lazy kernel and workspace setup must not be captured), then the
capture, then every later step copies its inputs into the static buffers and replays. The
captured graph ends by writing the new state over the static state buffers, so a replay needs
no host work at all. ``infer`` stays eager: it is the stateless check path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.manifest import Component


@dataclass(frozen=True)
class TorchOptions:
    """Where and how the module runs."""

    device: str = "cpu"  # "cpu" or "cuda"
    cuda_graphs: bool = True  # CUDA only: capture one graph per input shape and replay it
    warmup_steps: int = 3  # eager steps before a capture (cuBLAS handles, autotuning, allocator pools)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise EdgevoiceError(f"unknown device '{self.device}' for the torch backend; choose cpu or cuda")
        if self.warmup_steps < 1:
            raise EdgevoiceError("warmup_steps must be at least 1: a graph captured cold records one-time setup")


def import_torch():
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError.for_module("torch", "export", "the torch backend") from exc
    return torch


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, component: Component, module: Any, options: TorchOptions | None = None):
        super().__init__(component)
        self.options = options or TorchOptions()
        self.torch = torch = import_torch()
        if self.options.device == "cuda" and not torch.cuda.is_available():
            raise EdgevoiceError("the torch backend was asked for cuda but torch sees no GPU; use --device cpu")
        self.device = torch.device(self.options.device)
        self.module = module.to(self.device).eval()
        self._check_wiring()

    def _check_wiring(self) -> None:
        """The module's step must take and give exactly the manifest's tensors, in graph order."""
        inputs = [s.name for s in self.module.input_specs()] + [s.name for s in self.module.state_specs()]
        if set(inputs) != {s.name for s in self.component.inputs}:
            raise EdgevoiceError(
                f"{self.component.name}: the torch module takes {sorted(inputs)} but the package's graph takes "
                f"{sorted(s.name for s in self.component.inputs)}; rebuild the module with the package's recipe"
            )
        self.input_order = inputs
        self.output_order = [o.name for o in self.component.outputs]  # step outputs, then state outputs
        self.n_step_outputs = len(self.output_order) - len(self.module.state_specs())

    def to_device(self, array: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def to_host(self, name: str, tensor) -> np.ndarray:
        """Outputs leave in the manifest's dtype (fp16 math can hand back fp16 where the graph gives fp32)."""
        dtype = np.dtype(self.component.output(name).dtype)
        return tensor.detach().cpu().numpy().astype(dtype, copy=False)

    def step(self, tensors: Mapping[str, Any]) -> tuple:
        with self.torch.inference_mode():
            return self.module.step(*(tensors[name] for name in self.input_order))

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.step({name: self.to_device(value) for name, value in feeds.items()})
        return {name: self.to_host(name, r) for name, r in zip(self.output_order, results)}

    def stream(self, batch_size: int = 1) -> "TorchStream":
        return TorchStream(self, batch_size)


class TorchStream:
    """One session on a TorchRunner: state on the runner's device, CUDA graphs when enabled."""

    def __init__(self, runner: TorchRunner, batch_size: int = 1):
        self.runner = runner
        self.batch_size = batch_size
        self.state_names = [s.name for s in runner.module.state_specs()]
        zeros = runner.initial_state(batch_size)
        self.state = {name: runner.to_device(zeros[name]) for name in self.state_names}
        use_graphs = runner.options.cuda_graphs and runner.device.type == "cuda"
        self._graphs: dict[tuple, _CapturedStep] | None = {} if use_graphs else None
        self._pool = runner.torch.cuda.graph_pool_handle() if use_graphs else None

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runner._validate(feeds, state_held=True)
        if self._graphs is None:
            return self._eager(feeds)
        key = tuple(sorted((name, value.shape, value.dtype.str) for name, value in feeds.items()))
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = _CapturedStep(self, feeds)
        return graph.replay(feeds)

    def _eager(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        runner = self.runner
        tensors = {**{n: runner.to_device(v) for n, v in feeds.items()}, **self.state}
        results = runner.step(tensors)
        n = runner.n_step_outputs
        self.state = dict(zip(self.state_names, results[n:]))  # pure step: fresh tensors, no copy needed
        return {name: runner.to_host(name, r) for name, r in zip(runner.output_order[:n], results[:n])}

    @property
    def captured_shapes(self) -> int:
        return len(self._graphs or {})

    def reset(self) -> None:
        self.restore(self.runner.initial_state(self.batch_size))

    def snapshot(self) -> dict[str, np.ndarray]:
        return {name: t.detach().cpu().numpy().copy() for name, t in self.state.items()}

    def restore(self, snapshot: Mapping[str, np.ndarray]) -> None:
        if set(snapshot) != set(self.state):
            raise EdgevoiceError(f"snapshot holds {sorted(snapshot)}, the stream keeps {sorted(self.state)}")
        for name, value in snapshot.items():
            # In place: captured graphs hold these buffers' addresses.
            self.state[name].copy_(self.runner.to_device(value))


class _CapturedStep:
    """One CUDA graph for one set of input shapes: static inputs in, state written back in place."""

    def __init__(self, stream: TorchStream, feeds: Mapping[str, np.ndarray]):
        runner = stream.runner
        torch = runner.torch
        self.runner, self.stream = runner, stream
        self.inputs = {name: runner.to_device(value) for name, value in feeds.items()}
        tensors = {**self.inputs, **stream.state}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(runner.options.warmup_steps):
                runner.step(tensors)  # pure step: the state is read, not changed
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph, pool=stream._pool):
            results = runner.module.step(*(tensors[name] for name in runner.input_order))
            n = runner.n_step_outputs
            for name, new in zip(stream.state_names, results[n:]):
                static = stream.state[name]
                # An output that is a view of its own input would overlap the copy; clone it first.
                same = new.untyped_storage().data_ptr() == static.untyped_storage().data_ptr()
                static.copy_(new.clone() if same else new)
        self.outputs = dict(zip(runner.output_order[:n], results[:n]))

    def replay(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            self.inputs[name].copy_(self.runner.torch.from_numpy(np.ascontiguousarray(value)), non_blocking=False)
        self.graph.replay()
        return {name: self.runner.to_host(name, t) for name, t in self.outputs.items()}
