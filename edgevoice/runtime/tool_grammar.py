"""Constrained decoding of tool calls: once the model opens ``<tool_call>``, every token it may
write next keeps the text a prefix of a valid call of a registered tool.

The language of a call is regular (a fixed object shape, the tools' names, their argument keys in
schema order, bounded scalars), so it is compiled to a small character-level NFA:

    {"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

Values follow each property's schema: ``enum`` (any type), ``string`` (1..48 characters, JSON
escapes), ``integer``, ``number`` (no exponent), ``boolean``, ``null``. A property of another type
(array, object) cannot be written: an optional one is left out of the grammar, and a tool that
requires one is left out of constrained calls (``ToolGrammar.skipped`` names it).

Why hand-written: the libraries that do grammar-constrained decoding (outlines, xgrammar,
lm-format-enforcer, llguidance) bring torch, transformers or pydantic into the runtime, which
runs on numpy and onnxruntime only; the few hundred states a tool grammar needs are cheap to
simulate in Python against the top-k candidate tokens of each step.

The masking is ``ToolCallConstraint.pick``: the sampled token is kept when it is allowed;
otherwise the logits are masked to the allowed tokens among the ``top_k`` most likely (then the
next ones, until one is allowed) and sampling runs again on what is left. Rejecting then
resampling this way draws from exactly the masked distribution.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_STRING_CHARS = 48  # a spoken request's argument; bounded so a call always ends
MAX_DIGITS = 9
_ESCAPES = '"\\/bfnrt'


# --- patterns and their NFA ---------------------------------------------------------------------

@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Chars:
    test: Callable[[str], bool]


@dataclass(frozen=True)
class Seq:
    parts: tuple


@dataclass(frozen=True)
class Alt:
    options: tuple


@dataclass(frozen=True)
class Rep:
    part: Any
    low: int
    high: int


@dataclass(frozen=True)
class Obj:
    """A JSON object with keys in this order; ``required`` ones must appear, commas between."""

    items: tuple  # (key, value pattern, required)


def opt(part) -> Rep:
    return Rep(part, 0, 1)


class Nfa:
    """Thompson NFA over characters; a state set is a frozenset of ints. State 0 starts."""

    def __init__(self, pattern):
        self.edges: list[list[tuple[Any, int]]] = [[]]  # (char | predicate | None for epsilon, target)
        self.final = self._compile(pattern, 0)
        self._closures: dict[int, frozenset[int]] = {}
        self._steps: dict[tuple[frozenset[int], str], frozenset[int]] = {}
        self.start = self.closure({0})

    def _new(self) -> int:
        self.edges.append([])
        return len(self.edges) - 1

    def _edge(self, a: int, label, b: int) -> None:
        self.edges[a].append((label, b))

    def _compile(self, node, start: int) -> int:
        if isinstance(node, Lit):
            for ch in node.text:
                end = self._new()
                self._edge(start, ch, end)
                start = end
            return start
        if isinstance(node, Chars):
            end = self._new()
            self._edge(start, node.test, end)
            return end
        if isinstance(node, Seq):
            for part in node.parts:
                start = self._compile(part, start)
            return start
        if isinstance(node, Alt):
            end = self._new()
            for option in node.options:
                self._edge(self._compile(option, start), None, end)
            return end
        if isinstance(node, Rep):
            return self._compile_rep(node, start)
        if isinstance(node, Obj):
            return self._compile_obj(node, start)
        raise TypeError(f"unknown pattern node {node!r}")

    def _compile_rep(self, node: Rep, start: int) -> int:
        end = self._new()
        for i in range(node.high):
            if i >= node.low:
                self._edge(start, None, end)
            start = self._compile(node.part, start)
        self._edge(start, None, end)
        return end

    def _compile_obj(self, node: Obj, start: int) -> int:
        # States (item index, any item written yet): linear in the items, whatever is optional.
        empty, written = self._compile(Lit("{"), start), self._new()
        for key, value, required in node.items:
            nxt_empty, nxt_written = self._new(), self._new()
            for source, comma in ((empty, ""), (written, ",")):
                head = Seq((Lit(comma), opt(Lit(" "))) if comma else ())
                after = self._compile(Seq((head, Lit(json.dumps(key) + ":"), opt(Lit(" ")), value)), source)
                self._edge(after, None, nxt_written)
            if not required:
                self._edge(empty, None, nxt_empty)
                self._edge(written, None, nxt_written)
            empty, written = nxt_empty, nxt_written
        end = self._new()
        for last in (empty, written):  # "empty" is a dead end when an item was required
            self._edge(self._compile(Lit("}"), last), None, end)
        return end

    def closure(self, states) -> frozenset[int]:
        out: set[int] = set()
        for state in states:
            out |= self._closure_of(state)
        return frozenset(out)

    def _closure_of(self, state: int) -> frozenset[int]:
        if state not in self._closures:
            seen, todo = {state}, [state]
            while todo:
                for label, target in self.edges[todo.pop()]:
                    if label is None and target not in seen:
                        seen.add(target)
                        todo.append(target)
            self._closures[state] = frozenset(seen)
        return self._closures[state]

    def step(self, states: frozenset[int], ch: str) -> frozenset[int]:
        key = (states, ch)
        if key not in self._steps:
            nxt = {t for s in states for label, t in self.edges[s]
                   if label is not None and (label == ch if isinstance(label, str) else label(ch))}
            self._steps[key] = self.closure(nxt)
        return self._steps[key]


# --- from JSON schemas ------------------------------------------------------------------------

def _string_char(ch: str) -> bool:
    return ch not in '"\\' and ch >= " " and ch != "\ufffd"


def _digits(low: int, high: int) -> Rep:
    return Rep(Chars(str.isdigit), low, high)


def _integer(schema: Mapping[str, Any]) -> Seq:
    minimum = schema.get("minimum", schema.get("exclusiveMinimum"))
    sign = () if isinstance(minimum, (int, float)) and minimum >= 0 else (opt(Lit("-")),)
    whole = Alt((Lit("0"), Seq((Chars(lambda c: "1" <= c <= "9"), _digits(0, MAX_DIGITS - 1)))))
    return Seq((*sign, whole))


def _string(schema: Mapping[str, Any]) -> Seq:
    low = max(1, int(schema.get("minLength", 1)))
    high = max(low, min(int(schema.get("maxLength", MAX_STRING_CHARS)), MAX_STRING_CHARS))
    char = Alt((Chars(_string_char), Seq((Lit("\\"), Chars(lambda c: c in _ESCAPES)))))
    return Seq((Lit('"'), Rep(char, low, high), Lit('"')))


_SCALARS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "string": _string,
    "integer": _integer,
    "number": lambda s: Seq((_integer(s), opt(Seq((Lit("."), _digits(1, 6)))))),
    "boolean": lambda s: Alt((Lit("true"), Lit("false"))),
    "null": lambda s: Lit("null"),
}


def value_pattern(schema: Mapping[str, Any]):
    """The pattern of one argument's JSON value, or None when its type cannot be written."""
    if "enum" in schema:
        return Alt(tuple(Lit(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]))
    if "const" in schema:
        return Lit(json.dumps(schema["const"], ensure_ascii=False))
    kinds = schema.get("type", "string")  # untyped: a string is what a spoken request can fill
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not all(k in _SCALARS for k in kinds):
        return None
    return Alt(tuple(_SCALARS[k](schema) for k in kinds))


def arguments_pattern(parameters: Mapping[str, Any]) -> Obj | None:
    """The arguments object of a tool, or None when a required argument cannot be written."""
    required = set(parameters.get("required", ()))
    items = []
    for key, schema in parameters.get("properties", {}).items():
        value = value_pattern(schema)
        if value is None:
            if key in required:
                return None
            continue  # an optional array/object argument is left out
        items.append((key, value, key in required))
    return Obj(tuple(items))


class ToolGrammar:
    """The NFA of one ``<tool_call>`` body (after the opening tag, up to and with the closing tag)."""

    def __init__(self, tools: Sequence[Any]):
        calls, self.skipped = [], []
        for tool in tools:
            arguments = arguments_pattern(tool.parameters)
            if arguments is None:
                self.skipped.append(tool.name)
                continue
            name = Lit(json.dumps(tool.name, ensure_ascii=False))
            calls.append(Seq((name, Lit(","), opt(Lit(" ")), Lit('"arguments":'), opt(Lit(" ")), arguments)))
        self.names = [t.name for t in tools if t.name not in self.skipped]
        newline = opt(Lit("\n"))
        body = Seq((newline, Lit('{"name":'), opt(Lit(" ")), Alt(tuple(calls)), Lit("}"), newline, Lit(CLOSE)))
        self.nfa = Nfa(body) if calls else None


# --- the constraint the LLM session applies -------------------------------------------------------

@dataclass(frozen=True)
class ScanState:
    """Where the reply text stands: inside a call (its NFA states) or in free text (its last characters)."""

    call: frozenset[int] | None = None
    tail: str = ""
    calls: int = 0  # closed calls so far


class ToolCallConstraint:
    """What ``LlmSession.generate`` asks while decoding (see ``DecodeConstraint`` in llm.py).

    ``prefix`` is text the reply must start with (a router's forced opening); ``allow_calls``
    False forbids opening a call beyond those in ``prefix``; ``stop_after_call`` ends the reply at the first closed call
    (the result comes back in a tool message and the model speaks about it then, instead of
    guessing the result on its own).
    """

    def __init__(self, grammar: ToolGrammar, prefix: str = "", allow_calls: bool = True,
                 stop_after_call: bool = True, top_k: int = 32):
        self.grammar, self.prefix, self.top_k = grammar, prefix, top_k
        # How many calls may be opened (None: any); a grammar without tools allows none.
        self.max_calls = None if allow_calls else prefix.count(OPEN)
        if grammar.nfa is None:
            self.max_calls = 0
        self.stop_after_call = stop_after_call
        self._last: tuple[str, ScanState] = ("", ScanState())

    def state(self, text: str) -> ScanState | None:
        """The scan of ``text`` (None: not a prefix of allowed text), continued from the last one."""
        seen, state = self._last
        if not text.startswith(seen):
            seen, state = "", ScanState()
        state = self.advance(state, text[len(seen):])
        if state is not None:
            self._last = (text, state)
        return state

    def advance(self, state: ScanState | None, text: str) -> ScanState | None:
        nfa = self.grammar.nfa
        for ch in text:
            if state is None:
                return None
            if state.call is None:
                tail = (state.tail + ch)[-len(OPEN):]
                if tail != OPEN:
                    state = ScanState(None, tail, state.calls)
                    continue
                if self.max_calls is not None and state.calls >= self.max_calls:
                    return None
                state = ScanState(nfa.start, "", state.calls)
                continue
            nxt = nfa.step(state.call, ch)
            if not nxt:
                return None
            state = ScanState(None, "", state.calls + 1) if nfa.final in nxt else ScanState(nxt, "", state.calls)
        return state

    def allows(self, state: ScanState, piece: str | None) -> bool:
        """Whether a token may follow: ``piece`` is its text, None for a stop token."""
        if state.call is not None:
            return bool(piece) and self.advance(state, piece) is not None
        return piece is None or self.advance(state, piece) is not None

    def finished(self, text: str) -> bool:
        state = self.state(text)
        return self.stop_after_call and state is not None and state.call is None and state.calls > 0

    def pick(self, logits: np.ndarray, text: str, sample: Callable[[np.ndarray], int],
             pieces: Sequence[str], stop_ids: frozenset[int]) -> int | None:
        """The next token after ``text``: sampled, masked to allowed tokens if needed; None if none is."""
        state = self.state(text)
        if state is None:
            return None
        allowed = lambda i: self.allows(state, None if i in stop_ids else pieces[i])  # noqa: E731
        token = sample(logits)
        if allowed(token):
            return token
        order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")
        start, size = 0, max(1, self.top_k)
        while start < len(order):
            ok = [int(i) for i in order[start:start + size] if allowed(int(i))]
            if ok:
                masked = np.full(len(logits), -np.inf)
                masked[ok] = np.asarray(logits, dtype=np.float64)[ok]
                return sample(masked)
            start, size = start + size, size * 8  # rare: widen until some token fits
        return None
