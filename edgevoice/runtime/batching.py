"""Cross-session batching: steps that concurrent sessions submit to one engine share one call.

A server holds one runner per component and many conversations, each on its own threads. Each
step a session makes is small (one VAD chunk, one LLM token), so the engine spends most of a
batch-1 call reading its weights and waking threads; rows of several sessions stacked along the
batch dim share that cost. ``StepBatcher`` gathers the steps submitted within a short window
(``window_ms``, a few ms at most) up to ``max_batch`` rows, runs them as one call on a worker
thread, and hands each caller its own rows back.

The window is a bound, never a delay to sit out: a step waits at most ``window_ms`` for others to
join, counted from when it could first run (its submission, or the end of the engine's previous
call if it queued behind one), and not at all once every member of its ``BatchMembers`` group
(the server's live conversations) has a step waiting, or the batch is full. A lone conversation
(one member) therefore never waits.

Only steps with the same *signature* share a call: equal shapes apart from the batch dim (an LLM
prompt chunk of 16 tokens never joins a one-token decode step), and equal values of inputs that
have no batch dim (a voice's ``scales``). Rows may differ in position: the graphs take positions
and lengths per row (docs/batching.md lists each component and why it batches or not).

``BatchedRunner`` wraps a runner with the same interface (``infer``, ``stream``,
``initial_state``, ``component``), so sessions keep calling what they called; state stays with
the caller (state in, state out: DESIGN.md section 4), and the batcher holds no session's state
past the call that carries it. On a GPU its streams keep state on the host (the rows are joined
there), where a plain ``OrtRunner`` stream would keep it on the device.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from edgevoice.backends.abort import Abort, run_checked
from edgevoice.backends.base import Runner, StatefulStream
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component

Feeds = Mapping[str, np.ndarray]
BATCH_DIM = "batch"  # the manifest's name of the dim that grows with the number of sessions


class BatcherClosed(EdgevoiceError):
    """The batcher was shut down; its engine takes no more steps."""


class BatcherFull(EdgevoiceError):
    """More steps are waiting than the batcher holds: the engine is overloaded."""


@dataclass(frozen=True)
class BatchOptions:
    """How long steps wait for company and how many rows one engine call takes."""

    window_ms: float = 2.0  # longest a step waits after its submission for others to join
    max_batch: int = 8  # rows per engine call
    max_pending: int = 64  # steps waiting to run; a submit past this blocks, then fails
    submit_timeout_s: float = 5.0  # how long a submit waits for room in a full queue (0: fail at once)

    def __post_init__(self) -> None:
        if not 0 <= self.window_ms <= 50:
            raise EdgevoiceError(f"window_ms must be within 0..50 (a few ms is the point), got {self.window_ms}")
        if self.max_batch < 1 or self.max_pending < 1 or self.submit_timeout_s < 0:
            raise EdgevoiceError(
                f"batching needs max_batch >= 1, max_pending >= 1 and submit_timeout_s >= 0; got "
                f"{self.max_batch}, {self.max_pending}, {self.submit_timeout_s}"
            )


class Clock(Protocol):
    """Time as the batcher sees it; tests pass a fake one to check the window without wall time."""

    def now(self) -> float: ...

    def wait(self, condition: threading.Condition, timeout: float) -> None:
        """Wait on ``condition`` (held by the caller) for at most ``timeout`` seconds."""


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, condition: threading.Condition, timeout: float) -> None:
        condition.wait(timeout)


class BatchMembers:
    """Who may submit steps: the server's live conversations, shared by all its batchers.

    With ``count`` known, a batch runs as soon as every member has a step waiting, so a lone
    conversation never waits for company that cannot come. ``count`` 0 means unknown: steps wait
    the whole window unless the batch fills.
    """

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    def join(self) -> BatchMembers:
        """Add one member; ``with members.join():`` removes it again on exit."""
        with self._lock:
            self._count += 1
        return self

    def leave(self) -> None:
        with self._lock:
            if self._count == 0:
                raise EdgevoiceError("BatchMembers.leave() without a matching join()")
            self._count -= 1

    def __enter__(self) -> BatchMembers:
        return self

    def __exit__(self, *exc) -> None:
        self.leave()


def wait_needed(pending_rows: int, pending_steps: int, since: float, now: float, members: int,
                options: BatchOptions) -> float:
    """Seconds the waiting steps should still wait for company; 0 means run now.

    ``since``: when the oldest step could first have run, i.e. the later of its submission and
    the end of the engine's previous call. Counting from the submission alone would let a step
    that queued behind a long call run at once, alone, every time: two sessions whose steps
    alternate would never share a call.
    """
    if pending_rows >= options.max_batch:
        return 0.0  # full
    if members and pending_steps >= members:
        return 0.0  # every member is here: nobody else can come
    return max(0.0, since + options.window_ms / 1000.0 - now)


@dataclass
class _Step:
    feeds: Feeds
    rows: int
    signature: Hashable
    submitted: float
    result: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """What the batcher did: engine calls, rows, and how many calls had each row count."""

    calls: int = 0
    rows: int = 0
    sizes: Counter = field(default_factory=Counter)

    @property
    def shared_calls(self) -> int:  # calls that carried more than one row: steps actually batched
        return sum(count for size, count in self.sizes.items() if size > 1)


GroupRunner = Callable[[Sequence[Feeds]], list[dict[str, np.ndarray]]]


class StepBatcher:
    """Gathers steps from many threads and runs each group of equal signatures as one call.

    ``run_group`` takes the feeds of several steps and returns each step's outputs, in order;
    ``signature`` and ``rows`` say which steps may share a call and how many rows each brings.
    """

    def __init__(self, name: str, run_group: GroupRunner, signature: Callable[[Feeds], Hashable],
                 rows: Callable[[Feeds], int], options: BatchOptions = BatchOptions(),
                 members: BatchMembers | None = None, clock: Clock | None = None, start: bool = True):
        self.name, self.options = name, options
        self.members = members if members is not None else BatchMembers()
        self.stats = BatchStats()
        self._run_group, self._signature, self._rows = run_group, signature, rows
        self._clock = clock or MonotonicClock()
        self._pending: list[_Step] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"edgevoice-batch-{name}", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._thread.start()

    def submit(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Run one step (blocking) and return its outputs; raises what its batch's call raised."""
        return self.enqueue(feeds).result()

    def enqueue(self, feeds: Feeds) -> Future:
        """Queue one step; its outputs (or its batch's error) arrive on the returned Future."""
        step = _Step(feeds, self._rows(feeds), self._signature(feeds), 0.0)
        with self._cond:
            if not self._cond.wait_for(self._has_room, timeout=self.options.submit_timeout_s):
                raise BatcherFull(
                    f"the '{self.name}' batcher already holds {len(self._pending)} waiting steps (max_pending="
                    f"{self.options.max_pending}); the engine is overloaded: host fewer sessions or raise max_pending"
                )
            if self._closed:
                raise BatcherClosed(f"the '{self.name}' batcher is shut down; open the engine again to run steps")
            step.submitted = self._clock.now()
            self._pending.append(step)
            self._cond.notify_all()
        return step.result

    @property
    def closed(self) -> bool:  # True once close() ran: new steps are refused
        return self._closed

    def _has_room(self) -> bool:
        return self._closed or len(self._pending) < self.options.max_pending

    def close(self, timeout: float | None = 5.0) -> None:
        """Refuse new steps, fail the waiting ones with BatcherClosed, let the running call finish."""
        with self._cond:
            self._closed = True
            waiting, self._pending = self._pending, []
            self._cond.notify_all()
        for step in waiting:
            step.result.set_exception(BatcherClosed(f"the '{self.name}' batcher shut down before this step ran"))
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> StepBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the worker thread --------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                batch = self._gather()
                if batch is None:
                    return
                for group in _by_signature(batch):
                    self._run(group)
        finally:
            self.close(timeout=0)  # a dying worker must not leave callers waiting forever

    def _gather(self) -> list[_Step] | None:
        """Wait until a batch is due (full, everyone here, or the oldest step's window is over)."""
        with self._cond:
            engine_free = self._clock.now()
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            while not self._closed:
                rows = sum(step.rows for step in self._pending)
                since = max(self._pending[0].submitted, engine_free)
                wait = wait_needed(rows, len(self._pending), since, self._clock.now(), self.members.count, self.options)
                if wait <= 0:
                    break
                self._clock.wait(self._cond, wait)
            batch = self._take()
            self._cond.notify_all()  # room in the queue for blocked submitters
            return batch

    def _take(self) -> list[_Step]:
        """The oldest steps up to max_batch rows (always at least one, however many rows it has)."""
        taken, rows = [], 0
        for step in self._pending:
            if taken and rows + step.rows > self.options.max_batch:
                break
            taken.append(step)
            rows += step.rows
        del self._pending[: len(taken)]
        return taken

    def _run(self, group: list[_Step]) -> None:
        try:
            outputs = self._run_group([step.feeds for step in group])
        except BaseException as exc:  # noqa: BLE001 - every caller of the failed call gets the error
            for step in group:
                step.result.set_exception(exc)
            return
        self.stats.calls += 1
        self.stats.rows += sum(step.rows for step in group)
        self.stats.sizes[sum(step.rows for step in group)] += 1
        for step, out in zip(group, outputs):
            step.result.set_result(out)


def _by_signature(batch: list[_Step]) -> list[list[_Step]]:
    """Steps grouped by signature, groups in the order of their oldest step."""
    groups: dict[Hashable, list[_Step]] = {}
    for step in batch:
        groups.setdefault(step.signature, []).append(step)
    return list(groups.values())


# --- rows of a component's graph ----------------------------------------------------------------


@dataclass(frozen=True)
class BatchSupport:
    """Whether a component's steps can share a call, and why not when they cannot."""

    batches: bool
    reason: str = ""


def batch_support(component: Component) -> BatchSupport:
    """Read from the manifest: every output must carry the batch dim and be cut per row by shape.

    An output dim that no input fixes (a voice's ``samples``) depends on the data: rows come back
    padded to the longest, with nothing saying where each one ends.
    """
    input_dims = {d for spec in component.inputs for d in spec.shape if isinstance(d, str)}
    if BATCH_DIM not in input_dims:
        return BatchSupport(False, "no input has a batch dim: the graph was exported at a fixed batch of 1")
    for spec in component.outputs:
        if BATCH_DIM not in spec.shape:
            return BatchSupport(False, f"output '{spec.name}' {_fmt(spec.shape)} has no batch dim to split rows by")
        for dim in spec.shape:
            # A symbolic dim names input dims and functions of them ("Max(0, tokens - 8)"): only the
            # names that are not called as functions must be input dims.
            names = set(re.findall(r"([A-Za-z_]\w*)(?!\w|\s*\()", dim)) if isinstance(dim, str) else set()
            if names - input_dims:
                return BatchSupport(False, f"output '{spec.name}' has dim '{dim}', which no input fixes: rows would "
                                           "come back padded to the longest with no per-row length to cut them")
    return BatchSupport(True)


class RowLayout:
    """Where the batch dim of each tensor sits, and how rows are joined and split along it.

    Joining copies every row, and a KV cache is tens of MB per session (SmolLM2's: 47 MB), more
    than the engine's own time per row on a CPU. Two cases need no copy, and they are the steady
    state of a group of sessions decoding together:

    - state rows that are the consecutive views ``split`` made of one output of the previous call,
      covering all of it: that output array is the joined input as it stands;
    - a non-state input whose rows are the very same arrays as in the previous call (a Whisper
      window's cross K/V while its tokens are decoded): the previous joined array is reused.
      Such arrays are marked read-only when they join, so a caller that writes into an array it
      submitted (instead of handing in a new one) gets numpy's error, not a stale row.
    """

    def __init__(self, component: Component):
        self.inputs = {spec.name: _batch_axis(spec.shape) for spec in component.inputs}
        self.outputs = {spec.name: _batch_axis(spec.shape) for spec in component.outputs}
        self._fed_by = {inp: out for out, inp in component.state.items()}  # state input -> the output feeding it
        self._last: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}  # non-state input -> (rows, joined)
        self._last_outputs: dict[str, np.ndarray] = {}  # the previous call's outputs, which split cut
        # Some input carries the batch dim (batch_support checked); count rows on the first that does.
        self._row_input = next(name for name, axis in self.inputs.items() if axis is not None)

    def rows(self, feeds: Feeds) -> int:
        return int(feeds[self._row_input].shape[self.inputs[self._row_input]])

    def signature(self, feeds: Feeds) -> Hashable:
        """Steps with equal signatures can share a call: same shapes but for the batch dim, same
        dtypes, and the same values of inputs without a batch dim (those are one for the call)."""
        parts = []
        for name, axis in self.inputs.items():
            value = feeds[name]
            if axis is None:
                parts.append((name, value.dtype.str, value.shape, value.tobytes()))
            else:
                parts.append((name, value.dtype.str, value.shape[:axis] + value.shape[axis + 1 :]))
        return tuple(parts)

    def join(self, steps: Sequence[Feeds]) -> dict[str, np.ndarray]:
        joined = {}
        for name, axis in self.inputs.items():
            parts = [step[name] for step in steps]
            if axis is None:
                joined[name] = parts[0]
                continue
            if name in self._fed_by:
                whole = _tiled_by(parts, self._last_outputs.get(self._fed_by[name]), axis)
            else:
                whole = self._reused(name, parts)
            joined[name] = whole if whole is not None else np.concatenate(parts, axis=axis)
            if name not in self._fed_by:
                for part in parts:
                    part.flags.writeable = False  # a caller writing into it later must fail, not go unseen
                self._last[name] = (parts, joined[name])
        return joined

    def _reused(self, name: str, parts: list[np.ndarray]) -> np.ndarray | None:
        last = self._last.get(name)
        if last is None or len(last[0]) != len(parts) or any(a is not b for a, b in zip(last[0], parts)):
            return None
        return last[1]

    def split(self, outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Each step's rows of every output: views into the call's outputs, no copy."""
        self._last_outputs = dict(outputs)
        cuts = np.cumsum(rows)[:-1]
        parts = {name: np.split(value, cuts, axis=self.outputs[name]) for name, value in outputs.items()}
        return [{name: pieces[i] for name, pieces in parts.items()} for i in range(len(rows))]


class BatchedRunner(Runner):
    """A runner whose calls from many threads are batched; same interface as the runner it wraps.

    Each step is checked against the manifest on its own (at its own batch of one); the joined
    call then goes to the wrapped runner's backend. A component whose rows cannot be split
    (``support.batches`` False) runs each call on its own, as the plain runner would.
    """

    def __init__(self, runner: Runner, options: BatchOptions = BatchOptions(), members: BatchMembers | None = None,
                 clock: Clock | None = None, start: bool = True):
        super().__init__(runner.component)
        self.runner, self.backend = runner, runner.backend
        limit = engine_batch_limit(runner)
        self.support = batch_support(runner.component)
        if self.support.batches and limit == 1:
            self.support = BatchSupport(False, "the engine was built for a batch of 1 (the target's max_batch); "
                                               "export for a target with a larger max_batch to batch it")
        self.batcher: StepBatcher | None = None
        if self.support.batches:
            self.layout = RowLayout(runner.component)
            options = options if limit is None or options.max_batch <= limit else replace(options, max_batch=limit)
            self.batcher = StepBatcher(runner.component.name, self._run_joined, self.layout.signature,
                                       self.layout.rows, options, members, clock, start)

    def infer(self, feeds: Feeds, abort: Abort | None = None) -> dict[str, np.ndarray]:
        if self.batcher is None:
            return self.runner.infer(feeds, abort)
        self.runner._validate(feeds)
        return run_checked(abort, lambda: self.batcher.submit(dict(feeds)))  # serves others too: not stopped midway

    def stream(self, batch_size: int = 1) -> StatefulStream:
        # State as host arrays, handed in and out with each step (the rows are joined on the host).
        return StatefulStream(self, batch_size)

    def initial_state(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        return self.runner.initial_state(batch_size)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    def _run_joined(self, steps: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
        if len(steps) == 1:
            return [self.runner._infer_impl(steps[0])]
        outputs = self.runner._infer_impl(self.layout.join(steps))
        return self.layout.split(outputs, [self.layout.rows(s) for s in steps])

    def __getattr__(self, name: str):
        # Backend-specific attributes (providers, on_gpu, session ...) read through to the runner.
        if name == "runner":
            raise AttributeError(name)
        return getattr(self.runner, name)


def batched(runner: Runner, window_ms: float = 2.0, max_batch: int = 8, members: BatchMembers | None = None,
            **options) -> BatchedRunner:
    """``runner`` wrapped so that concurrent sessions' steps share engine calls.

    ``members``: the server's conversations (one ``BatchMembers`` for all engines; each conversation joins
    it while it lives), so a batch runs as soon as everyone is in. Other ``BatchOptions`` pass by keyword.
    """
    return BatchedRunner(runner, BatchOptions(window_ms=window_ms, max_batch=max_batch, **options), members)


def engine_batch_limit(runner: Runner) -> int | None:
    """Rows one call of this runner may take: the manifest's batch range where an engine was built
    for it (TensorRT, GPU providers); None on onnxruntime's CPU provider, which takes any batch."""
    if runner.backend == "ort" and not getattr(runner, "on_gpu", False):
        return None
    rng = runner.component.dynamic_dims.get(BATCH_DIM)
    return rng.max if rng is not None else 1


def _tiled_by(parts: Sequence[np.ndarray], whole: np.ndarray | None, axis: int) -> np.ndarray | None:
    """``whole`` when ``parts`` are its consecutive slices along ``axis``, together all of it."""
    if whole is None or whole.shape[axis] != sum(p.shape[axis] for p in parts):
        return None
    start, offset = whole.__array_interface__["data"][0], 0
    for part in parts:
        same_layout = (part.dtype == whole.dtype and part.strides == whole.strides and part.ndim == whole.ndim
                       and part.shape[:axis] + part.shape[axis + 1 :] == whole.shape[:axis] + whole.shape[axis + 1 :])
        if not same_layout or part.__array_interface__["data"][0] != start + offset * whole.strides[axis]:
            return None
        offset += part.shape[axis]
    return whole


def _batch_axis(shape: Sequence[int | str]) -> int | None:
    return list(shape).index(BATCH_DIM) if BATCH_DIM in shape else None


def _fmt(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
