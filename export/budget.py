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
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from edgevoice.errors import EdgevoiceError
from edgevoice.plan import RUNTIME_OVERHEAD, RuntimeOverhead
from edgevoice.recipes.base import RecipeComponent
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

    @property
    def weight_bytes(self) -> int:
        return sum(c.weight_bytes for c in self.components)

    @property
    def state_bytes(self) -> int:
        return sum(c.state_bytes for c in self.components)

    @property
    def needed_bytes(self) -> int:
        return self.weight_bytes + self.state_bytes + self.workspace_bytes + self.runtime_bytes

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
                f"workspace {format_bytes(self.workspace_bytes)}, runtime {format_bytes(self.runtime_bytes)}) of {format_bytes(self.available_bytes)} "
                f"on {self.target} ({pool}) at {self.precision}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "components": [asdict(c) for c in self.components], "needed_bytes": self.needed_bytes,
                "available_bytes": self.available_bytes, "fits": self.fits}


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
        measured.append(ComponentMemory(component.name, _weight_bytes(module, sessions), state, owner))
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
    sizes = {"batch": sessions, **{name: opt for name, (_, opt, _) in module.dim_ranges().items()}}
    inputs = [torch.zeros([sizes[d] if isinstance(d, str) else d for d in spec.shape], dtype=spec.dtype, device="meta")
              for spec in module.input_specs()]
    states = []
    for spec in module.state_specs():
        shape = list(spec.shape)
        shape[spec.batch_dim] = sessions
        states.append(torch.zeros(shape, dtype=spec.dtype, device="meta"))
    recorder = _Reads(watched)
    try:
        with torch.no_grad(), recorder:
            module.step(*inputs, *states)
    except (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError):
        return None  # data-dependent code (an .item() on a state, say): count every tensor instead
    return recorder.read


def _state_bytes(module, sessions: int) -> int:
    total = 0
    for spec in module.state_specs():
        shape = list(spec.shape)
        shape[spec.batch_dim] = sessions
        total += torch.Size(shape).numel() * torch.empty((), dtype=spec.dtype).element_size()
    return total


def budget_for(memories: Sequence[ComponentMemory], target: TargetProfile, precision: str, sessions: int = 1,
               overhead: RuntimeOverhead = RUNTIME_OVERHEAD) -> MemoryBudget:
    """Measured components against ``target`` (the same rules as ``edgevoice plan``)."""
    shared = target.memory_shared_with_cpu
    runtime = overhead.gpu_context_bytes if target.is_gpu else 0.0
    if shared:  # one pool: the runtime process lives in the same memory as the engines
        runtime += overhead.host_bytes
    reserved = overhead.os_share_bytes if shared and target.kind == "jetson" else 0.0
    return MemoryBudget(
        target=target.name, precision=precision, sessions=sessions, components=tuple(memories),
        workspace_bytes=target.build.workspace_mb * 2**20, runtime_bytes=int(runtime),
        pool_bytes=int(target.memory_gb * GB), reserved_bytes=int(reserved), shared_with_cpu=shared,
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
    return rows


def format_bytes(count: float) -> str:
    if count >= 0.1 * GB:
        return f"{count / GB:.2f} GB"
    if count >= 1e5:
        return f"{count / 1e6:.1f} MB"
    return f"{count / 1e3:.1f} kB" if count else "0"
