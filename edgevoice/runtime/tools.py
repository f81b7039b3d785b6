"""Tools the agent can call while it keeps listening and speaking.

A tool is a Python callable with a name, a JSON-schema for its arguments and a timeout. Calls run
in a worker pool, never on the listening or speaking threads; a result (or an error, or a timeout)
comes back through ``on_done`` whenever it is ready, and the session turns it into an event and
into conversation context.

How a model asks for a tool is one convention for every recipe (the cascade's, and Freeze-Omni's
in ``runtime.freeze_omni.tools``): what the system prompt teaches the LLM, and what
``parse_tool_calls`` reads, is one JSON object per call inside tags:

    <tool_call>{"name": "get_time", "arguments": {"city": "Paris"}}</tool_call>

Text outside the tags is spoken; the tags are not. When tools are registered, the system prompt
gets ``ToolRunner.prompt()``: the tools' names, descriptions and argument schemas, and this
convention. A result re-enters the conversation as a ``tool`` message (``ToolOutcome.message``:
JSON with ``name``, ``ok`` and ``result`` or ``error``), and the agent speaks about it as soon as
the floor is free.

Whether a reply calls a tool, and the call's JSON, are decided while decoding (``constraint``):
by default a lexical router over the tools' words forces the opening of a call, and a grammar
from the tools' schemas keeps every call parseable and valid (``tool_router``, ``tool_grammar``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.tool_grammar import ToolCallConstraint, ToolGrammar
from edgevoice.runtime.tool_router import ToolDecoding, tool_constraint

_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)
_OPEN = "<tool_call>"


@dataclass(frozen=True)
class Tool:
    name: str
    function: Callable[..., Any]  # called with the arguments as keyword arguments
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float = 10.0  # a call still running after this is reported as failed
    # No side effects (a lookup): it may run before the user's turn is committed, on what the
    # speculative answer asks (see ``edgevoice.runtime.early_tools``); others wait for the commit.
    read_only: bool = False

    def spec(self) -> dict[str, Any]:
        """What the model is told about the tool."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    call_id: int = 0


@dataclass(frozen=True)
class ToolOutcome:
    call: ToolCall
    ok: bool
    result: Any = None  # the callable's return value when ok
    error: str = ""  # what went wrong otherwise
    seconds: float = 0.0

    def answer(self) -> dict[str, Any]:
        """``{"result": ...}`` or ``{"error": ...}``: what the conversation and the events carry."""
        return {"result": self.result} if self.ok else {"error": self.error}

    def message(self) -> str:
        """The content of the ``tool`` turn that brings the outcome back to the model (every recipe)."""
        return json.dumps({"name": self.call.name, "ok": self.ok, **self.answer()}, default=str)


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split model output into the text to speak and the tool calls it contains.

    A malformed call is not spoken and not run; it comes back as a call named "" so the session can
    report it.
    """
    calls = []
    for match in _CALL.finditer(text):
        try:
            payload = json.loads(match.group(1))
            calls.append(ToolCall(str(payload["name"]), dict(payload.get("arguments", {}))))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            calls.append(ToolCall("", {"raw": match.group(1)}))
    return _CALL.sub("", text).strip(), calls


def split_tool_text(text: str, final: bool = False) -> tuple[str, list[ToolCall]]:
    """Like ``parse_tool_calls`` for text still being generated: an unfinished ``<tool_call>`` (or
    a tail that may become one) is withheld from the speakable text until it closes. With
    ``final`` the generation has ended and an unclosed tag is dropped."""
    _, calls = parse_tool_calls(text)
    speakable = _CALL.sub("", text)  # keep the original spacing: phrase cutting indexes this text
    open_at = speakable.find(_OPEN)
    if open_at >= 0:
        speakable = speakable[:open_at]
    elif not final:
        for size in range(min(len(_OPEN) - 1, len(speakable)), 0, -1):  # "<tool" may be a tag's start
            if _OPEN.startswith(speakable[-size:]):
                speakable = speakable[:-size]
                break
    return speakable, calls


class ToolRunner:
    """Registry plus worker pool. ``call`` returns at once; ``on_done`` gets the outcome later."""

    def __init__(self, on_done: Callable[[ToolOutcome], None], workers: int = 4,
                 decoding: ToolDecoding = ToolDecoding()):
        self._tools: dict[str, Tool] = {}
        self.decoding = decoding  # how calls are decided and written (replace it to change the policy)
        self._grammar: ToolGrammar | None = None  # built on first use, again after a registration
        self._on_done = on_done
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgevoice-tool")
        self._next_id = 0
        self._delivered: set[int] = set()  # call ids whose outcome went out (a late result is dropped)
        self.in_flight = 0  # calls started whose outcome has not gone out yet
        self._lock = threading.Lock()

    def register(self, tool: Tool) -> None:
        if not tool.name or tool.name in self._tools:
            raise EdgevoiceError(f"tool name {tool.name!r} is empty or already registered")
        _check_schema(tool)
        self._tools[tool.name] = tool
        self._grammar = None

    @property
    def tools(self) -> list[Tool]:
        return list(self._tools.values())

    def read_only(self, name: str) -> bool:
        """Whether ``name`` is a registered tool without side effects (False for an unknown name)."""
        tool = self._tools.get(name)
        return tool is not None and tool.read_only

    def prompt(self) -> str:
        """What the system prompt says about the registered tools and how to call them."""
        specs = "\n".join(json.dumps(tool.spec()) for tool in self._tools.values())
        return (
            "You can use these tools:\n" + specs + "\n"
            'To use one, write <tool_call>{"name": NAME, "arguments": {...}}</tool_call> and nothing '
            "else about it; its result comes back in a tool message, then answer with it."
        )

    def constraint(self, messages: list[dict[str, str]]) -> ToolCallConstraint | None:
        """How the LLM's next reply to ``messages`` may call tools (None when none is registered)."""
        if not self._tools:
            return None
        if self._grammar is None:
            self._grammar = ToolGrammar(self.tools)
        return tool_constraint(self.tools, messages, self.decoding, self._grammar)

    def call(self, call: ToolCall) -> ToolCall:
        """Start ``call`` in the background; returns it with its id."""
        with self._lock:
            self._next_id += 1
            self.in_flight += 1
            call = ToolCall(call.name, call.arguments, self._next_id)
        problem = self._problem(call)
        if problem:
            self._deliver(ToolOutcome(call, ok=False, error=problem))
            return call
        tool = self._tools[call.name]
        future = self._pool.submit(self._run, tool, call)
        timer = threading.Timer(tool.timeout_s, self._timed_out, args=(future, call, tool))
        timer.daemon = True
        timer.start()
        future.add_done_callback(lambda _: timer.cancel())
        return call

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, tool: Tool, call: ToolCall) -> None:
        start = time.monotonic()
        try:
            result = tool.function(**call.arguments)
            outcome = ToolOutcome(call, ok=True, result=result, seconds=time.monotonic() - start)
        except Exception as exc:  # noqa: BLE001 - a tool's failure is reported, never fatal
            outcome = ToolOutcome(call, ok=False, error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - start)
        self._deliver(outcome)

    def _timed_out(self, future, call: ToolCall, tool: Tool) -> None:
        if not future.done():
            self._deliver(ToolOutcome(call, ok=False, error=f"timed out after {tool.timeout_s:g} s", seconds=tool.timeout_s))

    def _deliver(self, outcome: ToolOutcome) -> None:
        with self._lock:
            if outcome.call.call_id in self._delivered:
                return
            self._delivered.add(outcome.call.call_id)
            self.in_flight -= 1
        self._on_done(outcome)

    def _problem(self, call: ToolCall) -> str:
        if call.name not in self._tools:
            known = ", ".join(sorted(self._tools)) or "none"
            return f"unknown tool {call.name!r} (registered: {known})"
        try:
            import jsonschema
        except ImportError:  # validation is a dependency of the runtime; absence is a broken install
            raise EdgevoiceError("jsonschema is missing; reinstall edgevoice") from None
        try:
            jsonschema.validate(call.arguments, self._tools[call.name].parameters)
        except jsonschema.ValidationError as exc:
            return f"bad arguments for {call.name}: {exc.message}"
        return ""


def _check_schema(tool: Tool) -> None:
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
    except jsonschema.SchemaError as exc:
        raise EdgevoiceError(f"tool {tool.name}: its parameters are not a valid JSON schema ({exc.message})") from exc
