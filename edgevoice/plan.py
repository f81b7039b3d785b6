"""Roofline planner: what a package's components should cost per step on a target, before running it.

For each component, from its manifest entry and its ONNX graph (numpy + onnx only):

- parameter bytes: every initializer at its stored dtype (the package precision is baked in);
- state bytes: the state inputs at the typical (opt) dims, read and written once per step;
- FLOPs per step: 2·M·K·N for MatMul/Gemm (batch dims multiplied in), 2·N·Cout·(Cin/groups)·k·out
  for Conv, the same over the input positions for ConvTranspose, 4·hidden·(input+hidden)·steps per
  gate for LSTM/GRU. Everything else (elementwise, norms, softmax, gathers) is not counted: in these
  models it is a small share of the math, and it is memory traffic the bytes term already bounds
  from below. Shapes come from the exporter's value_info with named dims set to their opt value;
  an op whose shape has a data-dependent dim (a TTS decoder's frame count) is listed as
  unresolved and left out, and the FLOP count is then marked partial;
- the lower bound of one step on the target: max(bytes moved / bandwidth, FLOPs / peak), where
  bytes moved = parameters + state read + state written + step inputs and outputs.

The memory budget adds parameters, one session's state and the runtime's own use (stated in
``RUNTIME_OVERHEAD``, not measured here) and compares it with the target's memory; on a Jetson the
pool is shared with the CPU and the OS, so the OS share is taken off first.

The turn estimate (end of user speech -> first audio for the cascade) sums the lower bounds of
the steps on the critical path under the ``TurnAssumptions`` it prints with the result.
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from edgevoice.manifest import Component, Manifest
from edgevoice.targets import TargetProfile

_DIM_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}
_DIM_CALLS = {"Max": max, "Min": min}
COUNTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "GRU")
GB = 1e9


@dataclass(frozen=True)
class RuntimeOverhead:
    """Memory the runtime needs besides the engines (assumed, stated, not measured by the planner)."""

    host_bytes: float = 0.6 * GB  # Python, numpy, onnxruntime/TensorRT libraries, tokenizers, audio rings
    gpu_context_bytes: float = 0.4 * GB  # a CUDA context and cuBLAS/cuDNN workspaces on a GPU target
    os_share_bytes: float = 1.5 * GB  # on a Jetson, what the OS and desktop keep of the shared pool


RUNTIME_OVERHEAD = RuntimeOverhead()


@dataclass(frozen=True)
class TurnAssumptions:
    """The shape of a typical short spoken turn, for the end-of-speech -> first-audio estimate."""

    asr_tokens: int = 16  # Whisper decoder steps: prompt + a short question's tokens + end of text
    prompt_tokens: int = 96  # chat template + system prompt + question, prefilled after the transcript
    first_phrase_tokens: int = 10  # LLM decode steps before the first phrase goes to the voice


@dataclass(frozen=True)
class ComponentPlan:
    name: str
    precision: str
    dims: dict[str, int]  # the named dims as planned (opt values)
    param_bytes: int
    state_bytes: int  # one copy of the state at its largest (a growing cache full), batch at opt
    io_bytes: int  # step inputs and outputs (state excluded)
    flops: float
    flops_partial: bool  # some counted ops had data-dependent shapes and were left out
    unresolved_ops: int
    bytes_per_step: float  # params + 2 x state (at opt dims) + io
    memory_time_s: float
    compute_time_s: float

    @property
    def lower_bound_s(self) -> float:
        return max(self.memory_time_s, self.compute_time_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_time_s >= self.compute_time_s else "compute"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lower_bound_s": self.lower_bound_s, "bound": self.bound}


@dataclass(frozen=True)
class Plan:
    package: str
    target: str
    components: tuple[ComponentPlan, ...]
    memory: dict[str, Any]
    turn: dict[str, Any] | None
    assumptions: dict[str, Any] = field(default_factory=dict)

    def component(self, name: str) -> ComponentPlan:
        return next(c for c in self.components if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "edgevoice.plan/1", "package": self.package, "target": self.target,
                "components": [c.to_dict() for c in self.components], "memory": self.memory,
                "turn": self.turn, "assumptions": self.assumptions}


def plan_package(manifest: Manifest, target: TargetProfile, turn: TurnAssumptions | None = None,
                 overhead: RuntimeOverhead = RUNTIME_OVERHEAD, components: Iterable[str] | None = None) -> Plan:
    """Plan every component of ``manifest`` (or those named) on ``target``."""
    names = list(components) if components is not None else list(manifest.components)
    plans = tuple(plan for name in names for plan in plan_profiles(manifest, manifest.component(name), target))
    turn = turn or TurnAssumptions()
    return Plan(
        package=str(manifest.directory), target=target.name, components=plans,
        memory=memory_budget(plans, target, overhead), turn=turn_estimate(plans, manifest, turn),
        assumptions={"turn": asdict(turn), "runtime_overhead": asdict(overhead), "counted_ops": list(COUNTED_OPS)},
    )


def plan_profiles(manifest: Manifest, component: Component, target: TargetProfile) -> list[ComponentPlan]:
    """One plan per role of the component: its optimization profiles when it declares several (the
    cascade's one LLM graph: ``llm:prefill`` at 16 tokens, ``llm:decode`` at 1), else one plan."""
    profiles = component.stream.get("trt_profiles") or []
    if len(profiles) < 2:
        return [plan_component(manifest, component, target)]
    plans = []
    for profile in profiles:
        opt = {name: int(rng[1]) for name, rng in profile["dims"].items()}  # (min, opt, max)
        plans.append(plan_component(manifest, component, target, opt, f"{component.name}:{profile['name']}"))
    return plans


def plan_component(manifest: Manifest, component: Component, target: TargetProfile,
                   opt_dims: dict[str, int] | None = None, name: str | None = None) -> ComponentPlan:
    """The component at its opt dims (``opt_dims`` overrides some, e.g. one profile's), named ``name``."""
    import onnx

    model = onnx.load(str(manifest.path(component.onnx)))
    dims = {dim: rng.opt for dim, rng in component.dynamic_dims.items()} | (opt_dims or {})
    shapes = _known_shapes(model.graph, dims)
    flops, unresolved = count_flops(model.graph, shapes)
    param_bytes = sum(_initializer_bytes(init) for init in model.graph.initializer)
    state_names = set(component.state_inputs)
    state_specs = [s for s in component.inputs if s.name in state_names]
    # A state that grows (the LLM cache's "context" dim) is held at its largest; a step at opt reads
    # and writes it at its opt size.
    largest = dims | {d: component.dynamic_dims[d].max for s in state_specs for d in s.shape
                      if isinstance(d, str) and d != "batch"}
    state_bytes = sum(_spec_bytes(s, largest) for s in state_specs)
    step_state_bytes = sum(_spec_bytes(s, dims) for s in state_specs)
    io_specs = [s for s in component.inputs if s.name not in state_names]
    io_specs += [s for s in component.outputs if s.name not in component.state]
    io_bytes = sum(_spec_bytes(s, dims, shapes.get(s.name)) for s in io_specs)
    moved = param_bytes + 2 * step_state_bytes + io_bytes
    return ComponentPlan(
        name=name or component.name, precision=component.precision, dims=dims, param_bytes=param_bytes,
        state_bytes=state_bytes, io_bytes=io_bytes, flops=flops, flops_partial=unresolved > 0,
        unresolved_ops=unresolved, bytes_per_step=moved,
        memory_time_s=moved / (target.memory_bandwidth_gbs * GB),
        compute_time_s=flops / (target.peak_tflops_fp16 * 1e12),
    )


def _known_shapes(graph, dims: dict[str, int]) -> dict[str, list[int | None]]:
    """Every tensor's shape with named dims set; None where a dim stays unknown."""
    shapes: dict[str, list[int | None]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [_dim(d, dims) for d in value.type.tensor_type.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _dim(d, dims: dict[str, int]) -> int | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return _evaluate_dim(d.dim_param, dims) if d.dim_param else None


def _evaluate_dim(expression: str, dims: dict[str, int]) -> int | None:
    """A named dim, or arithmetic over named dims as exporters write them ("3*tokens"); None if unknown."""
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        return None

    def value(node) -> int | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return dims.get(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _DIM_OPS:
            left, right = value(node.left), value(node.right)
            return None if left is None or right is None else _DIM_OPS[type(node.op)](left, right)
        # Clamped dims as torch's exporter writes them: the LLM's "Max(0, tokens - Max(0, tokens - 8))".
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _DIM_CALLS:
            args = [value(arg) for arg in node.args]
            return None if not args or None in args else _DIM_CALLS[node.func.id](args)
        return None

    return value(tree)


def count_flops(graph, shapes: dict[str, list[int | None]]) -> tuple[float, int]:
    """(FLOPs of the counted ops whose shapes are known, number of counted ops left out)."""
    total, unresolved = 0.0, 0
    for node in graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        flops = _node_flops(node, shapes)
        if flops is None:
            unresolved += 1
        else:
            total += flops
    return total, unresolved


def _node_flops(node, shapes) -> float | None:
    operands = [shapes.get(name) for name in node.input[:2]] + [shapes.get(node.output[0])]
    if any(s is None or any(d is None for d in s) for s in operands):
        return None
    a, b, out = operands
    attrs = {attr.name: attr for attr in node.attribute}
    if node.op_type in ("MatMul", "Gemm"):
        k = a[0] if node.op_type == "Gemm" and attrs.get("transA") and attrs["transA"].i else a[-1]
        return 2.0 * math.prod(out) * k
    # The weight's second dim is already per group, so grouped convolutions need no extra factor.
    if node.op_type == "Conv":  # weight (Cout, Cin/groups, *kernel)
        return 2.0 * math.prod(out) * math.prod(b[1:])
    if node.op_type == "ConvTranspose":  # weight (Cin, Cout/groups, *kernel); every input position scatters
        return 2.0 * math.prod(a) * math.prod(b[1:])
    # LSTM/GRU: X (seq, batch, input), W (dirs, gates*hidden, input), R (dirs, gates*hidden, hidden)
    recurrent = shapes.get(node.input[2])
    if recurrent is None or None in recurrent:
        return None
    return 2.0 * a[0] * a[1] * (math.prod(b) + math.prod(recurrent))


def _initializer_bytes(init) -> int:
    from onnx import helper

    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return int(math.prod(init.dims)) * itemsize


def _spec_bytes(spec, dims: dict[str, int], known: list[int | None] | None = None) -> int:
    shape = [dims.get(d) if isinstance(d, str) else d for d in spec.shape]
    if any(d is None for d in shape) and known is not None:
        shape = known
    if any(d is None for d in shape):
        return 0  # a data-dependent output size (TTS samples): not counted
    return int(math.prod(shape)) * np.dtype(spec.dtype).itemsize


def memory_budget(plans: tuple[ComponentPlan, ...], target: TargetProfile, overhead: RuntimeOverhead) -> dict[str, Any]:
    params = sum(p.param_bytes for p in plans)
    state = sum(p.state_bytes for p in plans)
    on_gpu = target.is_gpu
    runtime = overhead.host_bytes + (overhead.gpu_context_bytes if on_gpu else 0.0)
    total = target.memory_gb * GB
    if target.memory_shared_with_cpu and target.kind == "jetson":
        available = total - overhead.os_share_bytes
        counted = params + state + runtime  # one pool: engines, runtime and its libraries together
    else:
        available = total
        counted = params + state + (overhead.gpu_context_bytes if on_gpu else overhead.host_bytes)
    return {"param_bytes": params, "state_bytes": state, "runtime_bytes": runtime, "needed_bytes": counted,
            "available_bytes": available, "fits": counted <= available, "shared_with_cpu": target.memory_shared_with_cpu}


def turn_estimate(plans: tuple[ComponentPlan, ...], manifest: Manifest, turn: TurnAssumptions) -> dict[str, Any] | None:
    """End of user speech -> first audio as a sum of lower bounds on the cascade's critical path."""
    by_name = {p.name: p for p in plans}
    # The LLM's two roles: one graph's two profiles, or the two graphs of a package made before it.
    prefill, decode = ("llm:prefill", "llm:decode") if "llm:prefill" in by_name else ("llm_prefill", "llm_decode")
    needed = ("asr_encoder", "asr_decoder", prefill, decode, "tts")
    if not all(n in by_name for n in needed):
        return None
    prefill_chunk = by_name[prefill].dims.get("tokens", 1)
    decoder_tokens = by_name["asr_decoder"].dims.get("tokens", 1)
    stages = {
        "asr_encoder": by_name["asr_encoder"].lower_bound_s,
        "asr_decoder": math.ceil(turn.asr_tokens / decoder_tokens) * by_name["asr_decoder"].lower_bound_s,
        "llm_prefill": math.ceil(turn.prompt_tokens / prefill_chunk) * by_name[prefill].lower_bound_s,
        "llm_decode": turn.first_phrase_tokens * by_name[decode].lower_bound_s,
        "tts": by_name["tts"].lower_bound_s,
    }
    partial = [n for n in needed if by_name[n].flops_partial]
    return {"stages_s": stages, "first_audio_s": sum(stages.values()), "partial_flops": partial,
            "note": "lower bound: one VAD step, host work (sampling, phonemes) and launch overheads are left out"}

