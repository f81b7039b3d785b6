"""The tool-call grammar, the token masking and the intent router, on the host (no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.tool_grammar import OPEN, ToolCallConstraint, ToolGrammar
from edgevoice.runtime.tool_router import ToolDecoding, ToolRouter, tool_constraint, words
from edgevoice.runtime.tools import Tool, ToolRunner, parse_tool_calls

WEATHER = {"type": "object", "required": ["city"],
           "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}
TIMER = {"type": "object", "required": ["minutes"],
         "properties": {"minutes": {"type": "integer", "minimum": 1}, "label": {"type": "string"},
                        "loud": {"type": "boolean"}, "extra": {"type": "array"}}}
TOOLS = [
    Tool("get_weather", lambda city, unit="celsius": city, "Current weather conditions for a city.", WEATHER),
    Tool("set_timer", lambda minutes, **_: minutes, "Start a countdown timer.", TIMER),
    Tool("get_time", lambda: "15:10", "The current local time.", {"type": "object", "properties": {}}),
]


def closed(text: str) -> bool:
    state = ToolCallConstraint(ToolGrammar(TOOLS)).state(text)
    return state is not None and state.call is None and state.calls == 1


def alive(text: str) -> bool:
    return ToolCallConstraint(ToolGrammar(TOOLS)).state(text) is not None


@pytest.mark.parametrize("call", [
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
    'Sure. <tool_call>\n{"name":"get_weather","arguments":{"city":"S\\"o Paulo","unit":"celsius"}}\n</tool_call>',
    '<tool_call>{"name": "set_timer", "arguments": {"minutes": 10, "loud": true}}</tool_call>',
    '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
])
def test_valid_calls_are_accepted_and_validate(call):
    assert closed(call)
    _, [parsed] = parse_tool_calls(call)
    runner = ToolRunner(lambda o: None)
    for tool in TOOLS:
        runner.register(tool)
    assert runner._problem(parsed) == ""


@pytest.mark.parametrize("text", [  # each ends at its first wrong character
    '<tool_call>{"name": "get_wet',  # not a registered name
    '<tool_call>{"name": "get_time", "arguments": {"',  # it takes no arguments
    '<tool_call>{"name": "set_timer", "arguments": {"minutes": -',  # minimum >= 0: no sign
    '<tool_call>{"name": "set_timer", "arguments": {}',  # required key missing
    '<tool_call>{"name": "set_timer", "arguments": {"minutes": 01',  # not JSON
    '<tool_call>{"name": "set_timer", "arguments": {"minutes": 1, "e',  # arrays cannot be written
    '<tool_call>{"name": "get_weather", "arguments": {"u',  # schema order, city first
    '<tool_call>{"name": "get_weather", "arguments": {"city": ""',  # empty string
    '<tool_call>{"name": "get_weather", "arguments": {"city": "a\n',  # control character
    '<tool_call>{"name": "get_weather", "arguments": {"city": "x", "unit": "k',  # not in the enum
    "<tool_call>[",
])
def test_invalid_text_is_refused_as_soon_as_it_goes_wrong(text):
    assert alive(text[:-1]) and not alive(text)


def test_strings_are_bounded_so_a_call_always_ends():
    start = '<tool_call>{"name": "get_weather", "arguments": {"city": "'
    assert alive(start + "x" * 48) and not alive(start + "x" * 49)


def test_a_tool_with_an_unwritable_required_argument_is_left_out():
    tool = Tool("bulk", lambda items: items, parameters={"type": "object", "properties": {"items": {"type": "array"}},
                                                             "required": ["items"]})
    grammar = ToolGrammar([*TOOLS, tool])
    assert grammar.skipped == ["bulk"] and "bulk" not in grammar.names


def test_pick_masks_to_allowed_tokens_and_never_stops_inside_a_call():
    pieces = ["", "Hello", '"', "Paris", "}}", "</tool_call>", " London", "!"]
    stop = frozenset({0})
    constraint = ToolCallConstraint(ToolGrammar(TOOLS))
    inside = '<tool_call>{"name": "get_weather", "arguments": {"city": '
    logits = np.array([9.0, 8.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # the model wants to stop or chat
    greedy = lambda x: int(np.argmax(x))  # noqa: E731
    assert constraint.pick(logits, inside, greedy, pieces, stop) == 2  # only the opening quote fits
    assert constraint.pick(logits, inside + '"Paris"', greedy, pieces, stop) == 4
    assert constraint.pick(logits, "Hi", greedy, pieces, stop) == 0  # outside a call, anything goes
    # Nothing allowed in the top-k: the search widens past it.
    narrow = ToolCallConstraint(ToolGrammar(TOOLS), top_k=1)
    assert narrow.pick(logits, inside + '"Paris"', greedy, pieces, stop) == 4


def test_calls_can_be_forbidden_except_the_forced_one():
    grammar = ToolGrammar(TOOLS)
    banned = ToolCallConstraint(grammar, allow_calls=False)
    assert banned.state("hi <tool_ca") is not None and banned.state("hi <tool_call>") is None
    prefix = OPEN + '{"name": "get_time", "arguments": {'
    forced = ToolCallConstraint(grammar, prefix=prefix, allow_calls=False)
    assert forced.finished(prefix + "}}</tool_call>")
    assert forced.state(prefix + "}}</tool_call> <tool_call>") is None


@pytest.mark.parametrize("request_, tool", [
    ("What's the weather like in Paris?", "get_weather"),
    ("Can you set a timer for 20 minutes?", "set_timer"),
    ("What time is it?", "get_time"),
    ("Tell me a joke.", None),
    ("What is the capital city of France?", None),  # "city" alone is a detail word: below the threshold
    ("Set the table, please.", None),  # a generic verb alone
])
def test_router_fires_on_a_tool_s_own_words(request_, tool):
    assert ToolRouter(TOOLS).route(request_).tool == tool


def test_router_constraint_forces_the_opening_only_for_a_user_request():
    user = [{"role": "system", "content": "s"}, {"role": "user", "content": "Set a timer for ten minutes."}]
    constraint = tool_constraint(TOOLS, user)
    assert constraint.prefix == OPEN + '{"name": "set_timer", "arguments": {'
    after_result = [*user, {"role": "tool", "content": json.dumps({"name": "set_timer", "ok": True})}]
    follow_up = tool_constraint(TOOLS, after_result)
    assert follow_up.prefix == "" and follow_up.state("<tool_call>") is None  # no call loops
    model = tool_constraint(TOOLS, user, ToolDecoding(decide="model"))
    assert model.prefix == "" and model.state("<tool_call>") is not None
    assert words("What's the weather? Two timers!") == ["weather", "two", "timer"]
    with pytest.raises(EdgevoiceError, match="router"):
        ToolDecoding(decide="sometimes")
