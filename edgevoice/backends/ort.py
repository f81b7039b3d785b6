"""onnxruntime runner: CPU everywhere; CUDA and TensorRT execution providers where installed.

On a GPU the runner's streams keep every state tensor on the device between steps with
IOBinding: two preallocated sets of state buffers, the step reads one and writes the other, and
the roles swap (ping-pong), so a KV cache never crosses PCIe. Only the step's own inputs go in
from the host and its own outputs come back. On the CPU the plain ``session.run`` path stays the
default (it measured no slower there); ``io_binding=True`` forces the bound path, which is how the
tests check it without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgevoice.backends.abort import Abort, CallAborted
from edgevoice.backends.base import Runner, StatefulStream
from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.manifest import Component

# Preference order on a GPU: TensorRT EP, then CUDA EP; CPU always closes the list.
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class OrtOptions:
    """How an onnxruntime session is made."""

    device: str = "cpu"  # "cpu", "cuda" (CUDA/TensorRT providers, error if absent) or "auto"
    threads: int = 1  # intra-op threads of the CPU provider
    io_binding: bool | None = None  # keep state on the device between steps; None: on for GPU providers
    cpu_memory_arena: bool = False  # onnxruntime's CPU arena (see OrtRunner: off keeps an hour's RSS bounded)
    trt_cache_dir: str | None = None  # TensorRT provider: where built engines and timing caches are kept
    trt_provider: bool = True  # allow the TensorRT provider on "cuda" (False: CUDA provider only)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise EdgevoiceError(f"unknown device '{self.device}'; choose cpu, cuda or auto")
        if self.threads < 1:
            raise EdgevoiceError(f"threads must be at least 1, got {self.threads}")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError.for_module("onnxruntime", "ort", "running ONNX graphs") from exc
    return onnxruntime


def choose_providers(available: list[str], device: str, trt_provider: bool = True) -> list[str]:
    """Providers for ``device`` ("cpu", "cuda" or "auto") out of those onnxruntime offers."""
    if device not in ("cpu", "cuda", "auto"):
        raise EdgevoiceError(f"unknown device '{device}'; choose cpu, cuda or auto")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = _GPU_PROVIDERS if trt_provider else _GPU_PROVIDERS[1:]
    gpu = [p for p in wanted if p in available]
    if device == "cuda" and not gpu:
        raise EdgevoiceError(
            "device 'cuda' asked for, but this onnxruntime has no CUDA or TensorRT provider "
            f"(it has: {', '.join(available)}); install onnxruntime-gpu: pip install 'edgevoice[gpu]'"
        )
    return gpu + ["CPUExecutionProvider"]


def provider_options(providers: list[str], component: Component, trt_cache_dir: str | None) -> list[Any]:
    """Providers with their options: the TensorRT provider gets the manifest's shape profile and a cache."""
    configured: list[Any] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            configured.append((name, _trt_provider_options(component, trt_cache_dir)))
        elif name == "CUDAExecutionProvider":
            # The default stream keeps host-to-device copies ordered with the kernels that read them.
            configured.append((name, {"device_id": 0, "do_copy_in_default_stream": True}))
        else:
            configured.append(name)
    return configured


def _trt_provider_options(component: Component, cache_dir: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {"device_id": 0}
    if cache_dir is not None:
        # Engines take minutes to build on a Jetson; the cache makes every later start instant.
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(cache_dir))
    profile = {key: _profile_shapes(component, key) for key in ("min", "opt", "max")}
    if profile["min"]:
        # Explicit profiles from the manifest: without them the provider rebuilds on every new shape.
        options.update({f"trt_profile_{key}_shapes": shapes for key, shapes in profile.items()})
    return options


def _profile_shapes(component: Component, key: str) -> str:
    """'name:1x512,other:1x64' at the min, opt or max of every dynamic dim ('' when all are static)."""
    parts = []
    for spec in component.inputs:
        if not any(isinstance(d, str) for d in spec.shape):
            continue
        dims = [str(getattr(component.dynamic_dims[d], key)) if isinstance(d, str) else str(d) for d in spec.shape]
        parts.append(f"{spec.name}:{'x'.join(dims)}")
    return ",".join(parts)


def _graph_to_load(component: Component, onnx_path: Path) -> str | bytes:
    """The path, or for weights kept as a GGUF's codes (``stream["weights"] == "gguf"``) the graph
    with its codes fused into onnxruntime's 4-bit kernels (``ort_blocks``): run as written, every
    call would rebuild the float weights."""
    if component.stream.get("weights") != "gguf":
        return str(onnx_path)
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError.for_module("onnx", "ort", f"running {component.name}'s GGUF-coded weights") from exc
    from edgevoice.backends.ort_blocks import fuse_block_weights

    model = onnx.load(str(onnx_path))
    if fuse_block_weights(model) == 0:
        raise EdgevoiceError(f"{onnx_path} says its weights are GGUF codes but holds none in the expected form; "
                             f"export the package again")
    return model.SerializeToString()


class OrtRunner(Runner):
    backend = "ort"

    def __init__(self, component: Component, onnx_path: Path, device: str = "cpu", threads: int = 1,
                 options: OrtOptions | None = None):
        super().__init__(component)
        self.options = options or OrtOptions(device=device, threads=threads)
        ort = import_onnxruntime()
        session_options = ort.SessionOptions()
        # Streaming steps are tiny: one intra-op thread avoids thread wake-ups costing more than the
        # math, and no spinning keeps the audio thread's core free.
        session_options.intra_op_num_threads = self.options.threads
        session_options.inter_op_num_threads = 1
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No CPU memory arena: a graph fed many shapes (the LLM's prompt chunks and one-token steps
        # through one session, Freeze-Omni's re-prefills) grew the arena by 200 MB past minute 40 of
        # an hour's conversation and kept it; plain allocations stay bounded and decode measured as
        # fast (BENCHMARKS.md, 2026-12-05). GPU providers keep their own device arenas.
        session_options.enable_cpu_mem_arena = self.options.cpu_memory_arena
        providers = choose_providers(ort.get_available_providers(), self.options.device, self.options.trt_provider)
        configured = provider_options(providers, component, self.options.trt_cache_dir)
        self.session = ort.InferenceSession(_graph_to_load(component, onnx_path), session_options, providers=configured)
        self.providers = self.session.get_providers()
        self._output_names = [o.name for o in component.outputs]

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in _GPU_PROVIDERS

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, values))

    def _infer_abortable(self, feeds: Mapping[str, np.ndarray], abort: Abort) -> dict[str, np.ndarray]:
        # onnxruntime checks RunOptions.terminate between kernels: the Whisper encoder stops within
        # ~2-11 ms of set() instead of running its ~140 ms to the end (measured, 2 cores).
        run_options = import_onnxruntime().RunOptions()
        with abort.hook(lambda: setattr(run_options, "terminate", True)):
            try:
                values = self.session.run(self._output_names, dict(feeds), run_options)
            except Exception as exc:  # onnxruntime raises its generic Fail when terminated
                if abort.is_set():
                    raise CallAborted(f"{self.component.name}: aborted") from exc
                raise
        abort.check()  # set just as the last kernel finished: the caller has dropped the result anyway
        return dict(zip(self._output_names, values))

    def stream(self, batch_size: int = 1):
        bound = self.options.io_binding if self.options.io_binding is not None else self.on_gpu
        return BoundStream(self, batch_size) if bound else StatefulStream(self, batch_size)


class BoundStream:
    """One session's state held in device OrtValues; steps run through IOBinding with ping-pong buffers."""

    def __init__(self, runner: OrtRunner, batch_size: int = 1):
        self.runner = runner
        self.batch_size = batch_size
        self._ort = import_onnxruntime()
        self._device = "cuda" if runner.on_gpu else "cpu"
        self._binding = runner.session.io_binding()
        self._wiring = dict(runner.component.state)  # state output -> state input
        zeros = runner.initial_state(batch_size)
        self._current = {name: self._device_value(v) for name, v in zeros.items()}
        self._spare = {name: self._device_value(v) for name, v in zeros.items()}

    def _device_value(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._device, 0)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runner._validate(feeds, state_held=True)
        io = self._binding
        # Cleared every step so the outputs come back in the order bound below.
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        for name, value in feeds.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in self._current.items():
            io.bind_ortvalue_input(name, value)
        step_outputs = [o.name for o in self.runner.component.outputs if o.name not in self._wiring]
        for name in step_outputs:
            io.bind_output(name, "cpu")  # onnxruntime sizes it: step outputs may change shape per call
        for out_name, in_name in self._wiring.items():
            io.bind_ortvalue_output(out_name, self._spare[in_name])
        self.runner.session.run_with_iobinding(io)
        values = io.get_outputs()
        self._current, self._spare = self._spare, self._current
        return {name: values[i].numpy() for i, name in enumerate(step_outputs)}

    def reset(self) -> None:
        self.restore(self.runner.initial_state(self.batch_size))

    def snapshot(self) -> dict[str, np.ndarray]:
        return {name: value.numpy().copy() for name, value in self._current.items()}

    def restore(self, snapshot: Mapping[str, np.ndarray]) -> None:
        if set(snapshot) != set(self._current):
            raise EdgevoiceError(f"snapshot holds {sorted(snapshot)}, the stream keeps {sorted(self._current)}")
        for name, value in snapshot.items():
            self._current[name].update_inplace(np.ascontiguousarray(value))

    @property
    def state(self) -> dict[str, np.ndarray]:
        return self.snapshot()

