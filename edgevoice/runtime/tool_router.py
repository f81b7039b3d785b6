"""Whether a request needs a tool, decided before the LLM writes: a lexical intent router.

SmolLM2-135M, told about the tools in its system prompt, practically never opens
``<tool_call>`` on its own (BENCHMARKS.md, 2026-12-04: no call at all on the typed set), so by
default this router decides: it scores the overlap between the user's words and each tool's
name, argument names, enum values and description, and when the best score reaches the
threshold the reply is forced to open a call of that tool; the model then only fills the
arguments, under the grammar of ``tool_grammar``. Otherwise the model may not open a call.

No embeddings: the words a user says to ask for a tool are mostly the tool's own words
("weather", "timer", "time"), and a word list costs nothing on the device.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.tool_grammar import OPEN, ToolCallConstraint, ToolGrammar

# Words that say nothing about which tool is meant.
_STOP = frozenset("""
a an the is are was were be been am i me my you your it its it's this that these those of in on at
to for from by with about as and or but if then so do does did can could would should will shall
may might must what whats what's which who whom whose when where why how please tell give show
there here some any all no not now just like want need know let lets us we our them they he she
""".split())
# Verbs that name many tools' actions ("get", "set"): weak evidence on their own.
_WEAK = frozenset("get set make find check show start stop create list send use run do current".split())


@dataclass(frozen=True)
class ToolDecoding:
    """How the cascade decides on and writes tool calls.

    decide: "router" (the router decides; the model cannot open a call otherwise), "model" (the
    model decides alone from the system prompt) or "both" (the router forces a call when it fires,
    the model may still open one when it does not).
    """

    decide: str = "router"
    threshold: float = 1.0  # router score needed to force a call
    name_weight: float = 1.0  # a word of the tool's name or an enum value
    detail_weight: float = 0.5  # a word of its description or of an argument's name
    weak_weight: float = 0.25  # a generic verb ("get", "set") wherever it appears
    top_k: int = 32  # candidate tokens checked against the grammar before widening
    stop_after_call: bool = True  # end the reply at the closed call; the result is spoken later

    def __post_init__(self) -> None:
        if self.decide not in ("router", "model", "both"):
            raise EdgevoiceError(f"ToolDecoding.decide must be 'router', 'model' or 'both', not {self.decide!r}")


def words(text: str) -> list[str]:
    """Lower-case content words with a plural "s" dropped ("minutes" -> "minute")."""
    out = []
    for word in re.findall(r"[a-z0-9']+", text.lower().replace("_", " ")):
        word = word.strip("'")
        if word.endswith("'s"):
            word = word[:-2]
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        if word and word not in _STOP:
            out.append(word)
    return out


def _tool_words(tool: Any, options: ToolDecoding) -> dict[str, float]:
    """Each word that points at ``tool`` and how much it counts."""
    weights: dict[str, float] = {}

    def add(text: str, weight: float) -> None:
        for word in words(text):
            weights[word] = max(weights.get(word, 0.0), options.weak_weight if word in _WEAK else weight)

    add(tool.description, options.detail_weight)
    for key, schema in tool.parameters.get("properties", {}).items():
        add(key, options.detail_weight)
        for value in schema.get("enum", ()):
            add(str(value), options.name_weight)
    add(tool.name, options.name_weight)
    return weights


@dataclass(frozen=True)
class Route:
    tool: str | None  # the tool to call, or None
    score: float
    scores: Mapping[str, float]


class ToolRouter:
    def __init__(self, tools: Sequence[Any], options: ToolDecoding = ToolDecoding()):
        self.options = options
        self._words = {tool.name: _tool_words(tool, options) for tool in tools}

    def route(self, request: str) -> Route:
        said = set(words(request))
        scores = {name: sum(w for word, w in table.items() if word in said) for name, table in self._words.items()}
        best = max(scores, key=scores.get, default=None)
        if best is None or scores[best] < self.options.threshold:
            return Route(None, scores.get(best, 0.0) if best else 0.0, scores)
        return Route(best, scores[best], scores)


def tool_constraint(tools: Sequence[Any], messages: Sequence[Mapping[str, str]], options: ToolDecoding = ToolDecoding(),
                    grammar: ToolGrammar | None = None) -> ToolCallConstraint:
    """The decoding constraint for the next reply to ``messages``.

    Only a reply to a user message may be forced into a call: after a tool message the model
    speaks about the result (with ``decide="router"`` it cannot call again, so a call never loops).
    """
    grammar = grammar or ToolGrammar(tools)
    route = None
    if options.decide != "model" and messages and messages[-1]["role"] == "user":
        route = ToolRouter([t for t in tools if t.name in grammar.names], options).route(messages[-1]["content"])
    prefix = ""
    if route is not None and route.tool is not None:
        prefix = OPEN + '{"name": ' + json.dumps(route.tool, ensure_ascii=False) + ', "arguments": {'
    return ToolCallConstraint(grammar, prefix=prefix, allow_calls=options.decide != "router",
                              stop_after_call=options.stop_after_call, top_k=options.top_k)
