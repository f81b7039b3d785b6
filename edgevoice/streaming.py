"""The streaming contract shared by every stateful component.

Every component exposes a *pure* step, ``step(x, *state) -> (y, *new_state)``: state tensors go in
as inputs and come out as outputs, never as module buffers mutated in place (both ONNX exporters
silently drop such updates). State sizes are fixed at construction, so the exported graph has
static state shapes that TensorRT and CUDA graphs can reuse step after step; the one exception is
a named dim the host grows in steps (the LLM's KV cache capacity, "context").

``Streamer`` is the thin stateful wrapper for the PyTorch path (moshi's ``StreamingModule`` idea):
it holds the state between calls and can snapshot/restore it (barge-in rollback, many users per
engine). The ONNX graph is the pure step; the wrapper never exists there.

The ``check_*`` helpers are the two tests every streaming component owes: chunked streaming
equals the full-sequence call, and appending input never changes earlier outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgevoice.errors import EdgevoiceError


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of a step: its name and shape for a batch of one.

    The batch dimension is always dim ``batch_dim``; ``shape`` holds 1 there. A string dim is a
    named dynamic dim of the graph (the LLM's growing KV cache: "context"), sized by the caller.
    """

    name: str  # graph input name; the graph output is f"{name}_out"
    shape: tuple[int | str, ...]  # shape with batch size 1 at batch_dim
    batch_dim: int = 0  # which dim grows with the number of sessions
    dtype: torch.dtype = torch.float32

    def sized(self, batch_size: int, sizes: Mapping[str, int] | None = None) -> list[int]:
        """The shape for ``batch_size`` sessions; ``sizes`` gives each named dim its length."""
        shape = [(sizes or {})[d] if isinstance(d, str) else d for d in self.shape]
        shape[self.batch_dim] = batch_size
        return shape

    def zeros(self, batch_size: int, sizes: Mapping[str, int] | None = None) -> torch.Tensor:
        return torch.zeros(self.sized(batch_size, sizes), dtype=self.dtype)


@dataclass(frozen=True)
class InputSpec:
    """A non-state input of a step. String dims are named dynamic dims ("batch", "tokens" ...)."""

    name: str  # graph input name
    shape: tuple[int | str, ...]
    dtype: torch.dtype = torch.float32


class StreamingModule(nn.Module):
    """Base class of a component with a pure, exportable ``step``.

    Subclasses define ``state_specs()``, ``step(*inputs, *state) -> (*outputs, *new_state)`` and
    ``forward(x)`` (the full-sequence call). By default a step takes one input ``x`` of shape
    (batch, chunk_size) and returns one output ``y``; components with more inputs (token ids and a
    position, say) or outputs override ``input_specs``/``output_names``, and declare the range of
    every named dim other than "batch" in ``dim_ranges``.
    """

    chunk_size: int = 1
    chunk_dim: int = -1  # which dim of x is time
    compute_dtype: torch.dtype = torch.float32

    def set_compute_dtype(self, dtype: torch.dtype) -> "StreamingModule":
        """Run the math in ``dtype`` while graph inputs/outputs stay float32.

        Components whose numerics need float32 somewhere (e.g. an STFT front end) override this.
        """
        self.to(dtype)
        self.compute_dtype = dtype
        return self

    def state_specs(self) -> tuple[StateSpec, ...]:
        raise NotImplementedError

    def input_specs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("x", ("batch", self.chunk_size)),)

    def output_names(self) -> tuple[str, ...]:
        return ("y",)

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) of each named dim except "batch" (the target profile sets that one)."""
        return {}

    def init_state(self, batch_size: int = 1, sizes: Mapping[str, int] | None = None) -> tuple[torch.Tensor, ...]:
        """Zero state; a named state dim takes its length from ``sizes``, else its smallest size."""
        sizes = {name: low for name, (low, _, _) in self.dim_ranges().items()} | dict(sizes or {})
        return tuple(spec.zeros(batch_size, sizes) for spec in self.state_specs())

    def step(self, *inputs_and_state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def streamer(self, batch_size: int = 1) -> "Streamer":
        return Streamer(self, batch_size)


class Streamer:
    """Holds a component's state between calls on the PyTorch path."""

    def __init__(self, module: StreamingModule, batch_size: int = 1):
        self.module = module
        self.batch_size = batch_size
        self.state = module.init_state(batch_size)

    def reset(self) -> None:
        self.state = self.module.init_state(self.batch_size)

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor):
        """One step; returns the output, or a tuple of outputs when the step has several."""
        results = self.module.step(*inputs, *self.state)
        n = len(self.module.output_names())
        self.state = tuple(results[n:])
        return results[0] if n == 1 else tuple(results[:n])

    def snapshot(self) -> tuple[torch.Tensor, ...]:
        """A copy of the state that later calls cannot change."""
        return tuple(s.clone() for s in self.state)

    def restore(self, snapshot: Sequence[torch.Tensor]) -> None:
        specs = self.module.state_specs()
        if len(snapshot) != len(specs):
            raise EdgevoiceError(
                f"snapshot has {len(snapshot)} tensors but {type(self.module).__name__} keeps "
                f"{len(specs)} ({', '.join(s.name for s in specs)}); restore a snapshot of the same component"
            )
        for tensor, current in zip(snapshot, self.state):
            if tensor.shape != current.shape:
                raise EdgevoiceError(
                    f"snapshot tensor shape {tuple(tensor.shape)} does not match state shape "
                    f"{tuple(current.shape)}; was it taken with another batch size?"
                )
        self.state = tuple(s.clone() for s in snapshot)


def stream_in_chunks(
    module: StreamingModule, x: torch.Tensor, chunks_per_call: Sequence[int] = (1,)
) -> torch.Tensor:
    """Run ``x`` through ``module.step`` in chunks and concatenate the outputs over time.

    ``chunks_per_call`` cycles: (1, 3) feeds one chunk, then three, then one ... so tests cover
    uneven call sizes. The length of ``x`` along ``chunk_dim`` must be a multiple of chunk_size.
    """
    dim = module.chunk_dim
    total = x.shape[dim]
    if total % module.chunk_size:
        raise EdgevoiceError(
            f"input length {total} is not a multiple of chunk_size={module.chunk_size}; pad it first"
        )
    streamer = module.streamer(x.shape[0])
    outputs, start, call = [], 0, 0
    while start < total:
        n = chunks_per_call[call % len(chunks_per_call)] * module.chunk_size
        piece = x.narrow(dim, start, min(n, total - start))
        for offset in range(0, piece.shape[dim], module.chunk_size):
            outputs.append(streamer(piece.narrow(dim, offset, module.chunk_size)))
        start += n
        call += 1
    return torch.cat(outputs, dim=-1)


@torch.no_grad()
def check_streaming_matches_full(
    module: StreamingModule,
    x: torch.Tensor,
    chunks_per_call: Sequence[int] = (1, 3, 2),
    atol: float = 1e-5,
) -> float:
    """Assert chunked streaming equals the full-sequence call; return the max abs difference."""
    full = module(x)
    streamed = stream_in_chunks(module, x, chunks_per_call)
    if full.shape != streamed.shape:
        raise AssertionError(f"full output {tuple(full.shape)} vs streamed {tuple(streamed.shape)}")
    err = (full - streamed).abs().max().item()
    if not err <= atol:
        raise AssertionError(f"streaming differs from the full-sequence call by {err:.3g} > {atol:g}")
    return err


@torch.no_grad()
def check_causal(module: StreamingModule, x: torch.Tensor, cut_chunks: int, atol: float = 0.0) -> float:
    """Assert that appending input never changes earlier outputs.

    Runs the full-sequence call on the first ``cut_chunks`` chunks and on the whole input, and
    compares the overlapping outputs.
    """
    dim = module.chunk_dim
    prefix = x.narrow(dim, 0, cut_chunks * module.chunk_size)
    short, long = module(prefix), module(x)
    overlap = long.narrow(-1, 0, short.shape[-1])
    err = (short - overlap).abs().max().item()
    if not err <= atol:
        raise AssertionError(f"appending input changed earlier outputs by {err:.3g} > {atol:g}")
    return err
