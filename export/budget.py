"""Memory budget: does a recipe fit a target at a precision? Checked at export, before any graph is written.

Counted from the recipe's torch components, which may be meta tensors (nothing is allocated, so
the published Freeze-Omni shapes are checked in a second):

- weights: the parameters and buffers a component's step reads, each tensor once, at the dtype
  the precision gives it (parts a component keeps in float32, such as a front end or a turn-state
  head, are counted as they export). Which tensors the step reads is found by running it once on
  meta tensors (several graphs view one module: each speech-decoder graph uses only its stacks),
  so the count matches the graph's initializers; a step that cannot run on meta tensors is
  counted with every tensor of its module. Every graph carries its own copy: engines share no weights;
- state: one session's state tensors (caches, windows, counters) twice, as the runners keep
  ping-pong input and output buffers; graphs that declare one shared state set
  (``shared_state_with``) count it once;
- I/O: one session's step inputs and outputs besides the state, with every named dim at its
  maximum (a prompt chunk's logits, an encoder window): the buffers each session's runner keeps;
- workspace: the target's TensorRT workspace pool, once, as an estimate of activation memory.
  Each TensorRT execution context allocates its own activations (the engine's
  ``device_memory_size``) and the runners share none, so with several engines the real figure
  can be a multiple of this; measure it on the target;
- the runtime's own use, from ``edgevoice.plan.RUNTIME_OVERHEAD`` (assumed, stated, not measured):
  the CUDA context on a GPU; where memory is shared with the CPU also the host process
  (Python, numpy, the inference libraries, tokenizers, audio rings); on a Jetson the OS keeps a
  share of the pool, taken off before comparing.

Not counted: activations inside one step beyond the workspace pool (one audio chunk or one token
per step: small next to the weights) and data files the host memory-maps (the token table: only
the rows read are resident).

Sessions at once (``BatchRange``): what is left after the weights, the workspace and the runtime,
divided by one session's state and I/O, is how many conversations the target holds; the engines'
batch range is that, capped by the target profile's ``build.max_batch`` (the most rows one call
may carry, whatever the memory). ``package_batch_range`` counts the same from a package's files and
manifest (no torch modules), for the TensorRT build profiles.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component, DimRange
from edgevoice.plan import RUNTIME_OVERHEAD, RuntimeOverhead
from edgevoice.recipes.base import RecipeComponent
from edgevoice.runtime.batching import batch_support
from edgevoice.targets import TargetProfile, list_targets, load_target

EXPORTABLE = ("fp16", "fp32")  # precisions export writes, smallest first
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
GB = 1e9


@dataclass(frozen=True)
class ComponentMemory:
    """What one graph needs resident."""

    name: str
    weight_bytes: int  # its own copy of the weights at the package precision
    state_bytes: int  # one session's state, both ping-pong buffers; 0 when shared with an earlier graph
    state_shared_with: str | None = None  # the graph whose state set this one uses (counted there)
    io_bytes: int = 0  # the sessions' step inputs and outputs besides the state, named dims at their max


@dataclass(frozen=True)
class MemoryBudget:
    """A recipe's memory against one target's at one precision."""

    target: str
    precision: str
    sessions: int  # concurrent conversations whose state is counted
    components: tuple[ComponentMemory, ...]
    workspace_bytes: int  # TensorRT workspace pool (0 on the CPU)
    runtime_bytes: int  # the runtime's own use, as counted for this target
    pool_bytes: int  # the target's memory (on a Jetson: the whole pool shared with the CPU)
    reserved_bytes: int  # what the OS keeps of a shared Jetson pool
    shared_with_cpu: bool
    max_batch_cap: int = 1  # the target profile's build.max_batch: the most rows one engine call may carry
    opt_batch: int = 1  # the target profile's build.opt_batch: the rows TensorRT tunes its kernels for

    @property
    def weight_bytes(self) -> int:
        return sum(c.weight_bytes for c in self.components)

    @property
    def state_bytes(self) -> int:
        return sum(c.state_bytes for c in self.components)

    @property
    def io_bytes(self) -> int:
        return sum(c.io_bytes for c in self.components)

    @property
    def needed_bytes(self) -> int:
        return self.weight_bytes + self.state_bytes + self.io_bytes + self.workspace_bytes + self.runtime_bytes

    def batch_range(self) -> BatchRange:
        """How many sessions the target holds at once with these graphs, and the engines' batch range."""
        shared = self.weight_bytes + self.workspace_bytes + self.runtime_bytes
        per_session = -(-(self.state_bytes + self.io_bytes) // self.sessions)  # state and I/O grow with the batch
        return batch_range_of(self.target, self.available_bytes - shared, per_session, self.max_batch_cap,
                              self.opt_batch)

    @property
    def available_bytes(self) -> int:
        return self.pool_bytes - self.reserved_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.available_bytes

    def summary(self) -> str:
        """One line: needed vs available, and why the available figure is what it is."""
        pool = f"{format_bytes(self.pool_bytes)} shared with the CPU" if self.shared_with_cpu else f"{format_bytes(self.pool_bytes)} of GPU memory"
        if self.reserved_bytes:
            pool += f", {format_bytes(self.reserved_bytes)} kept for the OS"
        return (f"needs {format_bytes(self.needed_bytes)} (weights {format_bytes(self.weight_bytes)}, state {format_bytes(self.state_bytes)}, "
                f"I/O {format_bytes(self.io_bytes)}, workspace {format_bytes(self.workspace_bytes)}, runtime {format_bytes(self.runtime_bytes)}) of {format_bytes(self.available_bytes)} "
                f"on {self.target} ({pool}) at {self.precision}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "components": [asdict(c) for c in self.components], "needed_bytes": self.needed_bytes,
                "available_bytes": self.available_bytes, "fits": self.fits, "batch_range": self.batch_range().to_dict()}


@dataclass(frozen=True)
class BatchRange:
    """The sessions a target's memory holds at once, and the batch range its engines are built for."""

    target: str
    sessions_held: int  # conversations whose state and I/O fit beside the weights (0: not even one)
    per_session_bytes: int  # one session's state (both ping-pong buffers) and step I/O
    free_bytes: int  # the target's memory less weights, workspace, runtime and the OS share
    max_batch_cap: int  # the target profile's build.max_batch: the most rows one call may carry
    opt_batch_wanted: int  # the target profile's build.opt_batch

    @property
    def max_batch(self) -> int:
        # At least 1: a package that holds no session at all was refused by the export's budget check.
        return max(1, min(self.sessions_held, self.max_batch_cap))

    @property
    def opt_batch(self) -> int:
        return max(1, min(self.opt_batch_wanted, self.max_batch))

    @property
    def limited_by(self) -> str:
        return "memory" if self.sessions_held < self.max_batch_cap else "the profile's max_batch"

    def summary(self) -> str:
        """One line for the export's and the build's summaries."""
        held = "not even one session" if self.sessions_held < 1 else f"{self.sessions_held} sessions at once"
        return (f"{self.target} holds {held} ({format_bytes(self.per_session_bytes)} each in "
                f"{format_bytes(max(self.free_bytes, 0))} free); engines take batch 1..{self.max_batch} "
                f"(opt {self.opt_batch}, set by {self.limited_by})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "min": 1, "opt": self.opt_batch, "max": self.max_batch, "limited_by": self.limited_by}


def batch_range_of(target: str, free_bytes: int, per_session_bytes: int, max_batch_cap: int,
                   opt_batch: int = 1) -> BatchRange:
    """The batch range when ``free_bytes`` are left for sessions of ``per_session_bytes`` each."""
    held = max(0, free_bytes) // max(1, per_session_bytes)
    return BatchRange(target, int(held), int(per_session_bytes), int(free_bytes), max_batch_cap, opt_batch)


@dataclass(frozen=True)
class TargetMemory:
    """A target's memory as the budget counts it: the pool, the OS share, the runtime and the workspace."""

    pool_bytes: int
    reserved_bytes: int  # what the OS keeps of a shared Jetson pool
    runtime_bytes: int  # the runtime's own use (stated in edgevoice.plan.RUNTIME_OVERHEAD, not measured)
    workspace_bytes: int  # the TensorRT workspace pool (0 on the CPU)
    shared_with_cpu: bool


def target_memory(target: TargetProfile, overhead: RuntimeOverhead = RUNTIME_OVERHEAD) -> TargetMemory:
    shared = target.memory_shared_with_cpu
    runtime = overhead.gpu_context_bytes if target.is_gpu else 0.0
    if shared:  # one pool: the runtime process lives in the same memory as the engines
        runtime += overhead.host_bytes
    reserved = overhead.os_share_bytes if shared and target.kind == "jetson" else 0.0
    return TargetMemory(pool_bytes=int(target.memory_gb * GB), reserved_bytes=int(reserved), runtime_bytes=int(runtime),
                        workspace_bytes=target.build.workspace_mb * 2**20, shared_with_cpu=shared)


def measure(components: Sequence[RecipeComponent], precision: str, sessions: int = 1) -> tuple[ComponentMemory, ...]:
    """Weights and state of each component at ``precision`` (meta-shaped components work)."""
    if precision not in _DTYPES:
        raise EdgevoiceError(f"precision '{precision}' cannot be exported yet; choose {' or '.join(EXPORTABLE)}")
    counted_state: set[str] = set()
    measured = []
    for component in components:
        module = _shapes_only(component.module).set_compute_dtype(_DTYPES[precision])
        group = component.stream.get("shared_state_with") or [component.name]
        owner = next((name for name in group if name in counted_state), None)
        state = 0 if owner else 2 * _state_bytes(module, sessions)
        counted_state.add(component.name)
        measured.append(ComponentMemory(component.name, _weight_bytes(module, sessions), state, owner,
                                        _io_bytes(module, sessions)))
    return tuple(measured)


def _shapes_only(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose tensors are meta: converting it to a precision allocates nothing."""
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, requires_grad=False) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def _weight_bytes(module, sessions: int) -> int:
    tensors = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    used = _read_by_step(module, tensors, sessions)
    return sum(t.numel() * t.element_size() for t in (used if used is not None else tensors).values())


class _Reads(TorchFunctionMode):
    """Records which of ``watched`` are passed to any torch function or tensor method."""

    def __init__(self, watched: dict[int, torch.Tensor]):
        super().__init__()
        self.watched, self.read = watched, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in tree_leaves((args, kwargs)):
            if isinstance(value, torch.Tensor) and id(value) in self.watched:
                self.read[id(value)] = value
        return func(*args, **kwargs)


def _read_by_step(module, watched: dict[int, torch.Tensor], sessions: int) -> dict[int, torch.Tensor] | None:
    """The tensors one step of the (meta) ``module`` reads; None when the step cannot run on meta."""
    recorder = _Reads(watched)
    outputs = _meta_step(module, sessions, "opt", recorder)
    return None if outputs is None else recorder.read


def _meta_step(module, sessions: int, dims: str, mode: TorchFunctionMode | None = None) -> tuple | None:
    """One step on meta tensors with the named dims at their "opt" or "max"; None when it cannot run."""
    which = {"opt": 1, "max": 2}[dims]
    sizes = {"batch": sessions, **{name: r[which] for name, r in module.dim_ranges().items()}}
    inputs = [torch.zeros(_sized(spec.shape, sizes), dtype=spec.dtype, device="meta") for spec in module.input_specs()]
    states = [torch.zeros(spec.sized(sessions, sizes), dtype=spec.dtype, device="meta") for spec in module.state_specs()]
    try:
        with torch.no_grad(), (mode or contextlib.nullcontext()):
            return tuple(module.step(*inputs, *states))
    except (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError):
        return None  # data-dependent code (an .item() on a state, say): the caller counts without it


def _sized(shape: Sequence[int | str], sizes: Mapping[str, int]) -> list[int]:
    return [sizes[d] if isinstance(d, str) else d for d in shape]


def _io_bytes(module, sessions: int) -> int:
    """The step's inputs and outputs besides the state at the named dims' max: a session's I/O buffers.

    Outputs come from one step on meta tensors; a step that cannot run there counts its inputs only.
    """
    sizes = {"batch": sessions, **{name: high for name, (_, _, high) in module.dim_ranges().items()}}
    total = sum(torch.Size(_sized(spec.shape, sizes)).numel() * _itemsize(spec.dtype) for spec in module.input_specs())
    outputs = _meta_step(module, sessions, "max")
    if outputs is not None:
        plain = outputs[: len(outputs) - len(module.state_specs())]  # step returns (*outputs, *new_state)
        total += sum(t.numel() * t.element_size() for t in plain if isinstance(t, torch.Tensor))
    return int(total)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _state_bytes(module, sessions: int) -> int:
    """One copy of the sessions' state; a named state dim (a growing cache's "context") at its max."""
    sizes = {name: high for name, (_, _, high) in module.dim_ranges().items()}
    return sum(torch.Size(spec.sized(sessions, sizes)).numel() * _itemsize(spec.dtype) for spec in module.state_specs())


def budget_for(memories: Sequence[ComponentMemory], target: TargetProfile, precision: str, sessions: int = 1,
               overhead: RuntimeOverhead = RUNTIME_OVERHEAD) -> MemoryBudget:
    """Measured components against ``target`` (the same rules as ``edgevoice plan``)."""
    memory = target_memory(target, overhead)
    return MemoryBudget(
        target=target.name, precision=precision, sessions=sessions, components=tuple(memories),
        workspace_bytes=memory.workspace_bytes, runtime_bytes=memory.runtime_bytes, pool_bytes=memory.pool_bytes,
        reserved_bytes=memory.reserved_bytes, shared_with_cpu=memory.shared_with_cpu,
        max_batch_cap=target.build.max_batch, opt_batch=target.build.opt_batch,
    )


def memory_budget(components: Sequence[RecipeComponent], target: TargetProfile | str, precision: str,
                  sessions: int = 1) -> MemoryBudget:
    """The budget of ``components`` on ``target`` at ``precision``, for ``sessions`` conversations."""
    profile = load_target(target) if isinstance(target, str) else target
    return budget_for(measure(components, precision, sessions), profile, precision, sessions)


def check_memory(components: Sequence[RecipeComponent], target: TargetProfile | str, precision: str,
                 what: str, sessions: int = 1) -> MemoryBudget:
    """The budget, or an EdgevoiceError naming a precision or targets that would fit."""
    profile = load_target(target) if isinstance(target, str) else target
    measured = {precision: measure(components, precision, sessions)}
    result = budget_for(measured[precision], profile, precision, sessions)
    if result.fits:
        return result
    for other in EXPORTABLE:  # what would fit: every exportable precision, measured once
        if other not in measured:
            measured[other] = measure(components, other, sessions)
    raise EdgevoiceError(f"{what} does not fit {result.target}: it {result.summary()}; "
                         f"{_what_would_fit(measured, result, sessions)}")


def _what_would_fit(measured: dict[str, tuple[ComponentMemory, ...]], refused: MemoryBudget, sessions: int) -> str:
    profile = load_target(refused.target)
    for precision in EXPORTABLE:
        if precision != refused.precision and profile.supports(precision):
            other = budget_for(measured[precision], profile, precision, sessions)
            if other.fits:
                return f"export with --precision {precision} (needs {format_bytes(other.needed_bytes)})"
    fitting = []
    for name in list_targets():
        candidate = load_target(name)
        precision = next((p for p in EXPORTABLE if candidate.supports(p)), None)
        if precision and budget_for(measured[precision], candidate, precision, sessions).fits:
            fitting.append(f"{name} ({precision})")
    if not fitting:
        return "no target profile in hw/ has the memory; reduce the model or its capacities"
    return f"targets that fit: {', '.join(fitting)}"


def budget_lines(budget: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(row, weights, state) rows of a budget's ``to_dict`` for a table, totals last."""
    rows = [(c["name"], format_bytes(c["weight_bytes"]),
             f"with {c['state_shared_with']}" if c.get("state_shared_with") else format_bytes(c["state_bytes"]))
            for c in budget["components"]]
    rows.append(("workspace (TensorRT pool)", format_bytes(budget["workspace_bytes"]), ""))
    rows.append(("runtime (stated, not measured)", format_bytes(budget["runtime_bytes"]), ""))
    held = budget.get("batch_range")  # absent in packages exported before the batch range was counted
    if held is not None:
        rows.append((f"holds {held['sessions_held']} sessions at once",
                     f"batch 1..{held['max']} (opt {held['opt']}, set by {held['limited_by']})",
                     f"{format_bytes(held['per_session_bytes'])} per session"))
    return rows


# --- the batch range of an exported package, from its files (TensorRT build profiles) ------------


def package_batch_range(directory: str | Path, components: Mapping[str, Component], target: TargetProfile,
                        overhead: RuntimeOverhead = RUNTIME_OVERHEAD) -> BatchRange:
    """The sessions ``target`` holds with a package's graphs, counted from what the package holds.

    The same sums as ``MemoryBudget.batch_range`` without the torch modules (imported graphs such as
    the cascade's voice have none): weights are the ONNX files' bytes (with external data), a
    session's state and I/O come from the manifest's tensor specs at batch 1 with every named dim at
    its max; graphs that declare one shared state set count it once.
    """
    folder = Path(directory)
    weights = sum(_file_bytes(folder / c.onnx) + _file_bytes(folder / f"{c.onnx}.data") for c in components.values())
    per_session, counted = 0, set()
    for component in components.values():
        group = component.stream.get("shared_state_with") or [component.name]
        dims = {name: r.max for name, r in component.dynamic_dims.items()} | {"batch": 1}
        state = set(component.state_inputs)
        if not any(name in counted for name in group):
            per_session += 2 * sum(_spec_bytes(s.shape, s.dtype, dims) for s in component.inputs if s.name in state)
        counted.add(component.name)
        per_session += sum(_spec_bytes(s.shape, s.dtype, dims) for s in component.inputs if s.name not in state)
        per_session += sum(_spec_bytes(s.shape, s.dtype, dims) for s in component.outputs if s.name not in component.state)
    memory = target_memory(target, overhead)
    free = memory.pool_bytes - memory.reserved_bytes - weights - memory.workspace_bytes - memory.runtime_bytes
    return batch_range_of(target.name, free, per_session, target.build.max_batch, target.build.opt_batch)


def with_batch_range(component: Component, batch: BatchRange) -> Component:
    """``component`` with its batch dim set to ``batch`` where its steps can share a call.

    Graphs whose rows cannot be split (docs/batching.md: the voice) and graphs exported for one
    session keep their range; no graph is given more rows than it was exported for.
    """
    exported = component.dynamic_dims.get("batch")
    if exported is None or exported.max <= 1 or not batch_support(component).batches:
        return component
    high = min(batch.max_batch, exported.max)
    dims = dict(component.dynamic_dims) | {"batch": DimRange(min=1, opt=min(batch.opt_batch, high), max=high)}
    return replace(component, dynamic_dims=dims)


def _file_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _spec_bytes(shape: Sequence[int | str], dtype: str, dims: Mapping[str, int]) -> int:
    """Bytes of a tensor spec at ``dims``; 0 for a dim the run decides (a voice's samples)."""
    sizes = [d if isinstance(d, int) else _dim_value(d, dims) for d in shape]
    if any(size is None for size in sizes):
        return 0
    return math.prod(sizes) * np.dtype(dtype).itemsize


def _dim_value(expression: str, dims: Mapping[str, int]) -> int | None:
    """A named dim, or a product/sum of named dims and integers as exporters write them ("600*tokens")."""
    if expression in dims:
        return dims[expression]
    terms = [t.strip() for t in expression.split("+")]
    total = 0
    for term in terms:
        product = 1
        for factor in (f.strip() for f in term.split("*")):
            value = int(factor) if factor.isdigit() else dims.get(factor)
            if value is None:
                return None
            product *= value
        total += product
    return total


def format_bytes(count: float) -> str:
    if count >= 0.1 * GB:
        return f"{count / GB:.2f} GB"
    if count >= 1e5:
        return f"{count / 1e6:.1f} MB"
    return f"{count / 1e3:.1f} kB" if count else "0"
