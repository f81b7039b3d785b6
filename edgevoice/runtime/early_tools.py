"""Early, read-only tool calls: lookups that start while the user is still speaking.

The think-while-listening pass answers speculatively in the user's pauses. When that answer asks
for a tool registered ``read_only=True`` (no side effects: a lookup), the call starts at once and
its outcome is kept here, with the user turn it belongs to, instead of joining the conversation.
When the turn is committed, the reply that holds the floor asks for its calls again:

- a kept call with the same tool and the same arguments is *used*: its outcome joins the
  conversation as soon as it is there, and the tool is not called a second time;
- every other kept call of the turn is *dropped*: its outcome is ignored, even one that arrives
  later.

A turn that ends without a committed reply (dismissed as noise), or that the next turn replaces,
drops what it kept, so a lookup never answers another turn than the one that made it. A
speculation cancelled because the user went on does *not* drop its calls: the turn is still the
same, and its final words may still ask for the same lookup ("where is my package, the number is
4 4 7 1 2 ... it was sent on Monday"); that is where the time is saved.

Committed calls start here too (``commit``), so that one lock orders every call's ``tool_call``
event before its result's. A tool with side effects only ever starts here as a committed call: the
thinker holds what a speculative answer asks of it until the answer is released.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edgevoice.runtime import events as ev
from edgevoice.runtime.tools import ToolCall, ToolOutcome, ToolRunner

Emit = Callable[..., None]  # emit(kind, turn=..., **data)


class Fate(enum.Enum):
    """What becomes of an outcome the tool runner delivered."""

    NORMAL = "normal"  # not an early call: it joins the conversation as every outcome does
    USE = "use"  # an early call the committed reply asked for: it joins the conversation now
    KEEP = "keep"  # an early call not decided yet: kept until the turn is committed
    DROP = "drop"  # an early call that was dropped: ignored


@dataclass
class _Early:
    call: ToolCall  # with the runner's call id
    turn: int
    used: bool = False
    outcome: ToolOutcome | None = None


def call_key(call: ToolCall) -> tuple[str, str]:
    """Same tool, same arguments: argument order and spacing do not matter."""
    return call.name, json.dumps(call.arguments, sort_keys=True, default=str)


class EarlyToolCalls:
    """The tool calls of a conversation's answers, early or committed. Thread-safe: the think stage
    starts and commits calls, the listen loop hands in outcomes and ends turns. Every call starts
    under one lock with its ``tool_call`` event, and outcomes are handed in under it, so a call's
    event always comes before its result's.

    Each ``tool_call`` event says ``early``, the ``call_id``, the ``reply`` that wrote the call and
    ``compute_s``: that reply's LLM seconds until the call was written (for latency estimates).
    """

    def __init__(self, runner: ToolRunner, emit: Emit):
        self._runner, self._emit = runner, emit
        self._lock = threading.Lock()
        self._calls: dict[int, _Early] = {}  # by call id: kept, or used and still running
        self._ready: list[ToolOutcome] = []  # used outcomes that had arrived before the claim
        self._asked: dict[int, set[str]] = {}  # per turn: tools the committed reply asked for
        self._dropped_ids: set[int] = set()  # dropped calls still running: their outcome is ignored

    def start(self, call: ToolCall, turn: int, reply: int, compute_s: float) -> None:
        """A speculative answer of ``turn`` asks for a read-only ``call``: run it now (once per turn)."""
        with self._lock:  # held across the call: its outcome cannot be handed in before it is known
            if self._kept(call, turn) is not None:
                return  # an earlier speculation of this turn asked the same
            started = self._call(call, turn, reply, compute_s, early=True)
            self._calls[started.call_id] = _Early(started, turn)

    def commit(self, call: ToolCall, turn: int, reply: int, compute_s: float) -> None:
        """The committed reply of ``turn`` asks for ``call``: the kept early call when one matches
        (``early_tool_used``), a call now otherwise."""
        with self._lock:
            self._asked.setdefault(turn, set()).add(call.name)
            entry = self._kept(call, turn)
            if entry is None:
                self._call(call, turn, reply, compute_s, early=False)
                return
            entry.used = True
            if entry.outcome is not None:
                self._ready.append(entry.outcome)
                del self._calls[entry.call.call_id]
        self._emit(ev.EARLY_TOOL_USED, turn=turn, name=call.name, arguments=call.arguments,
                   call_id=entry.call.call_id, reply=reply, waiting=entry.outcome is None)

    def settle(self, turn: int) -> None:
        """The committed reply of ``turn`` has asked for all its calls: drop the turn's other ones."""
        with self._lock:
            asked = self._asked.pop(turn, set())
        self._drop(lambda e: e.turn == turn,
                   lambda e: "different arguments" if e.call.name in asked else "not asked by the reply")

    def abandon(self, upto_turn: int, reason: str) -> None:
        """Turns up to ``upto_turn`` will not be committed (any more): drop what they kept."""
        with self._lock:
            for turn in [t for t in self._asked if t <= upto_turn]:
                del self._asked[turn]
        self._drop(lambda e: e.turn <= upto_turn, lambda e: reason)

    def arrived(self, outcome: ToolOutcome) -> Fate:
        """An outcome from the runner (listen loop): what to do with it."""
        with self._lock:
            entry = self._calls.get(outcome.call.call_id)
            if entry is None:
                if outcome.call.call_id in self._dropped_ids:
                    self._dropped_ids.discard(outcome.call.call_id)
                    return Fate.DROP
                return Fate.NORMAL
            if entry.used:
                del self._calls[outcome.call.call_id]
                return Fate.USE
            entry.outcome = outcome
            return Fate.KEEP

    def take_ready(self) -> list[ToolOutcome]:
        """Used outcomes that were already there when the reply asked (listen loop)."""
        with self._lock:
            ready, self._ready = self._ready, []
            return ready

    @property
    def pending(self) -> bool:
        """Some used outcome waits to join the conversation."""
        with self._lock:
            return bool(self._ready)

    # --- inside ----------------------------------------------------------------------------------

    def _call(self, call: ToolCall, turn: int, reply: int, compute_s: float, early: bool) -> ToolCall:
        started = self._runner.call(call)
        self._emit(ev.TOOL_CALL, turn=turn, name=call.name, arguments=call.arguments, early=early,
                   call_id=started.call_id, reply=reply, compute_s=compute_s)
        return started

    def _kept(self, call: ToolCall, turn: int) -> _Early | None:
        key = call_key(call)
        for entry in self._calls.values():
            if entry.turn == turn and not entry.used and call_key(entry.call) == key:
                return entry
        return None

    def _drop(self, which: Callable[[_Early], bool], reason: Callable[[_Early], str]) -> None:
        with self._lock:
            dropped = [e for e in self._calls.values() if not e.used and which(e)]
            for entry in dropped:
                del self._calls[entry.call.call_id]
                if entry.outcome is None:
                    self._dropped_ids.add(entry.call.call_id)
        for entry in dropped:
            self._emit(ev.EARLY_TOOL_DROPPED, turn=entry.turn, name=entry.call.name, arguments=entry.call.arguments,
                       call_id=entry.call.call_id, reason=reason(entry), finished=entry.outcome is not None)
