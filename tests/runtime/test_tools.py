"""Tools run in the background: slow ones do not block, failures and timeouts are reported."""

from __future__ import annotations

import threading
import time

import pytest

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.tools import Tool, ToolCall, ToolRunner, parse_tool_calls

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


class Collector:
    def __init__(self):
        self.outcomes, self.event = [], threading.Event()

    def __call__(self, outcome):
        self.outcomes.append(outcome)
        self.event.set()

    def wait(self, n: int, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.outcomes


def test_call_returns_at_once_and_result_arrives_later():
    done = Collector()
    runner = ToolRunner(done)
    gate = threading.Event()
    runner.register(Tool("weather", lambda city: (gate.wait(5), f"sunny in {city}")[1], parameters=CITY))
    call = runner.call(ToolCall("weather", {"city": "Paris"}))  # must not wait for the tool
    assert call.call_id == 1 and done.outcomes == []
    gate.set()
    [outcome] = done.wait(1)
    assert outcome.ok and outcome.result == "sunny in Paris"


def test_failure_unknown_tool_bad_arguments_and_timeout_are_reported():
    done = Collector()
    runner = ToolRunner(done)
    runner.register(Tool("boom", lambda: 1 / 0))
    runner.register(Tool("slow", lambda: time.sleep(2), timeout_s=0.1))
    runner.register(Tool("weather", lambda city: city, parameters=CITY))
    for call in (ToolCall("boom", {}), ToolCall("nope", {}), ToolCall("weather", {"city": 3}), ToolCall("slow", {})):
        runner.call(call)
    outcomes = {o.call.name: o for o in done.wait(4)}
    assert "ZeroDivisionError" in outcomes["boom"].error
    assert "unknown tool 'nope'" in outcomes["nope"].error
    assert "bad arguments for weather" in outcomes["weather"].error
    assert "timed out after 0.1 s" in outcomes["slow"].error
    time.sleep(2.2)
    assert len(done.outcomes) == 4  # the slow tool's late result is not delivered a second time


def test_registration_checks():
    runner = ToolRunner(lambda o: None)
    runner.register(Tool("a", lambda: 1))
    with pytest.raises(EdgevoiceError, match="already registered"):
        runner.register(Tool("a", lambda: 1))
    with pytest.raises(EdgevoiceError, match="not a valid JSON schema"):
        runner.register(Tool("b", lambda: 1, parameters={"type": "nonsense"}))


def test_parse_tool_calls():
    text, calls = parse_tool_calls('Let me check. <tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>')
    assert text == "Let me check." and calls == [ToolCall("weather", {"city": "Oslo"})]
    text, calls = parse_tool_calls("<tool_call>{not json}</tool_call> ok")
    assert text == "ok" and calls[0].name == ""
    assert parse_tool_calls("plain words") == ("plain words", [])
