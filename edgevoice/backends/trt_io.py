"""The TensorRT runner's bookkeeping, kept free of TensorRT and CUDA so it is tested on a CPU.

- ``check_engine_io``: an engine's tensors (names, input/output mode, dtypes, shapes) against the
  manifest, at open, so a stale or foreign engine fails in one line instead of at the first step.
- ``data_dependent_outputs``: outputs whose length only the run itself knows (a Piper voice's
  ``samples``); they need an output allocator and cannot be replayed from a CUDA graph.
- ``input_shape_error``: the line for a shape ``set_input_shape`` refused.
- ``GraphCache``: captured CUDA graphs keyed on the input shapes and every bound device address.

Everything here takes duck-typed engine objects (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``get_tensor_dtype``, ``get_tensor_shape``, ``get_tensor_profile_shape``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component, TensorSpec

# TensorRT DataType member names -> numpy dtype names (the manifest's spelling).
_TRT_DTYPES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8", "INT4": "int4",
}


def _enum_name(value: Any) -> str:
    """'FLOAT' from trt.DataType.FLOAT (pybind enums have .name; str() gives 'DataType.FLOAT')."""
    return str(getattr(value, "name", value)).rsplit(".", 1)[-1]


def numpy_dtype_name(trt_dtype: Any) -> str:
    name = _enum_name(trt_dtype)
    return _TRT_DTYPES.get(name, name.lower())


def data_dependent_outputs(component: Component) -> tuple[str, ...]:
    """Outputs with a dim that no input fixes: a name outside ``dynamic_dims``, or -1.

    Named dynamic dims (batch, tokens) follow from the input shapes, so TensorRT knows those
    outputs' sizes before the run; any other unknown dim is computed on the device.
    """
    return tuple(
        spec.name for spec in component.outputs
        if any(_unknown_dim(dim, component) for dim in spec.shape)
    )


def _unknown_dim(dim: int | str, component: Component) -> bool:
    return (isinstance(dim, str) and dim not in component.dynamic_dims) or (isinstance(dim, int) and dim < 0)


def check_engine_io(engine: Any, component: Component, fix: str) -> None:
    """Raise one line naming the first tensor whose name, mode, dtype or shape differs from the manifest."""
    problem = engine_io_mismatch(engine, component)
    if problem is not None:
        file = component.engine.file if component.engine else component.name
        raise EdgevoiceError(f"{file} does not match the manifest: {problem}; rebuild it with `{fix}`")


def engine_io_mismatch(engine: Any, component: Component) -> str | None:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    specs = {s.name: ("INPUT", s) for s in component.inputs} | {s.name: ("OUTPUT", s) for s in component.outputs}
    missing, extra = sorted(set(specs) - set(names)), sorted(set(names) - set(specs))
    if missing or extra:
        return f"tensors missing from the engine {missing}, not in the manifest {extra}"
    for name in names:
        mode, spec = specs[name]
        problem = _tensor_mismatch(engine, name, mode, spec)
        if problem is not None:
            return problem
    return None


def _tensor_mismatch(engine: Any, name: str, mode: str, spec: TensorSpec) -> str | None:
    actual_mode = _enum_name(engine.get_tensor_mode(name))
    if actual_mode != mode:
        return f"'{name}' is an {actual_mode.lower()} of the engine but an {mode.lower()} in the manifest"
    dtype = numpy_dtype_name(engine.get_tensor_dtype(name))
    if dtype != spec.dtype:
        return f"'{name}' is {dtype} in the engine, {spec.dtype} in the manifest"
    shape = tuple(int(d) for d in engine.get_tensor_shape(name))
    fits = len(shape) == len(spec.shape) and all(
        d == -1 or isinstance(m, str) or d == m for d, m in zip(shape, spec.shape))
    if not fits:
        return f"'{name}' has shape {_fmt(shape)} in the engine, {_fmt(spec.shape)} in the manifest"
    return None


def input_shape_error(component: Component, name: str, shape: Iterable[int], engine: Any) -> EdgevoiceError:
    """The error for a shape ``set_input_shape`` refused, with the engine's profile range for it."""
    try:
        low, _, high = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
        allowed = f"the engine's profile allows {_fmt(low)} to {_fmt(high)}"
    except Exception:  # noqa: BLE001 - an engine without a profile for it: say what is known
        allowed = f"the manifest declares {_fmt(component.input(name).shape)}"
    return EdgevoiceError(
        f"{component.name}: TensorRT refused input '{name}' with shape {_fmt(tuple(shape))}; {allowed} — "
        f"feed a shape in that range, or re-export with a larger range and rebuild"
    )


def _fmt(shape: Iterable[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class GraphCache:
    """Instantiated CUDA graphs keyed on (input shapes, every bound tensor address).

    A graph replays the addresses it was captured with, so any address change (a buffer grown,
    state reallocated by ``restore``, the ping-pong side) must miss; ``prune`` destroys graphs that
    still point at memory no longer held, so a later allocation at the same address is not used
    through a stale graph by accident and the executables do not pile up.
    """

    def __init__(self, destroy: Callable[[Any], None]):
        self._destroy = destroy
        self._graphs: dict[tuple, Any] = {}
        self._seen: set[tuple] = set()

    @staticmethod
    def key(feed_shapes: Mapping[str, tuple[int, ...]], addresses: Mapping[str, int]) -> tuple:
        return tuple(sorted((n, tuple(s)) for n, s in feed_shapes.items())), tuple(sorted(addresses.items()))

    def get(self, key: tuple) -> Any:
        return self._graphs.get(key)

    def seen(self, key: tuple) -> bool:
        """True from the second call on: the first plain run flushes TensorRT's deferred setup."""
        if key in self._seen:
            return True
        self._seen.add(key)
        return False

    def put(self, key: tuple, graph_exec: Any) -> None:
        self._graphs[key] = graph_exec

    def prune(self, live_addresses: Iterable[int]) -> int:
        """Destroy every graph bound to an address outside ``live_addresses``; return how many."""
        live = set(live_addresses)
        stale = [k for k in self._graphs if any(addr not in live for _, addr in k[1])]
        for key in stale:
            self._destroy(self._graphs.pop(key))
        self._seen = {k for k in self._seen if all(addr in live for _, addr in k[1])}
        return len(stale)

    def clear(self) -> None:
        for graph_exec in self._graphs.values():
            self._destroy(graph_exec)
        self._graphs.clear()
        self._seen.clear()

    def __len__(self) -> int:
        return len(self._graphs)
