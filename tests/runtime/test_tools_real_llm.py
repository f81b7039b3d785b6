"""Tool calling with the real SmolLM2-135M engines: the router decides, the grammar writes the call,
and a reply rolled back after a call leaves the cache as it was committed.

Greedy decoding; a few short requests (the bigger measurement is benchmarks/tool_bench.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from edgevoice.runtime.cascade.pipeline import DEFAULT_SYSTEM_PROMPT
from edgevoice.runtime.llm import LlmSession
from edgevoice.runtime.tools import Tool, ToolRunner, parse_tool_calls

pytestmark = pytest.mark.slow
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
MINUTES = {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1}}, "required": ["minutes"]}
MAX_NEW_TOKENS = 32


@pytest.fixture(scope="module")
def manifest(request):
    """The README's CPU package where the tests share it; exported only on a fresh checkout."""
    from edgevoice.manifest import read_manifest

    if (REPO / "engines" / "cpu" / "manifest.json").is_file():
        return read_manifest(REPO / "engines" / "cpu")
    return request.getfixturevalue("cascade_package")


@pytest.fixture(scope="module")
def llm(manifest) -> LlmSession:
    return LlmSession.from_manifest(manifest)


@pytest.fixture(scope="module")
def runner() -> ToolRunner:
    runner = ToolRunner(lambda outcome: None)
    runner.register(Tool("get_weather", lambda city: f"sunny in {city}",
                         "Current weather conditions and temperature for a city.", CITY))
    runner.register(Tool("set_timer", lambda minutes: minutes,
                         "Start a countdown timer that rings after the given number of minutes.", MINUTES))
    runner.register(Tool("get_time", lambda: "15:10", "The current local time.", {"type": "object", "properties": {}}))
    return runner


def chat(runner: ToolRunner, request: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"{DEFAULT_SYSTEM_PROMPT}\n\n{runner.prompt()}"},
            {"role": "user", "content": request}]


def reply(llm: LlmSession, runner: ToolRunner, messages, commit: bool = True) -> str:
    pieces = llm.generate(messages, MAX_NEW_TOKENS, commit=commit, constraint=runner.constraint(messages))
    return "".join(p.text for p in pieces)


@pytest.mark.parametrize("request_, name, arguments", [
    ("What's the weather like in Paris?", "get_weather", {"city": "Paris"}),
    ("Can you set a timer for 20 minutes?", "set_timer", {"minutes": 20}),
    ("What time is it?", "get_time", {}),
])
def test_requests_for_a_tool_get_one_valid_call(llm, runner, request_, name, arguments):
    text = reply(llm, runner, chat(runner, request_))
    spoken, calls = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == [(name, arguments)], text
    assert runner._problem(calls[0]) == "" and spoken == ""
    assert llm.finish_reason == "tool_call"  # the reply ends at the call; the result is spoken later


@pytest.mark.parametrize("request_", ["What is the capital of France?", "Tell me a joke."])
def test_requests_without_a_tool_get_no_call(llm, runner, request_):
    text = reply(llm, runner, chat(runner, request_))
    assert "<tool_call>" not in text and parse_tool_calls(text)[1] == []
    assert text.strip()


def test_rollback_after_a_tool_call_returns_to_the_committed_cache(manifest, llm, runner):
    llm.reset()
    first = chat(runner, "What is the capital of France?")
    answer = reply(llm, runner, first)  # committed: the cache holds this turn
    committed_tokens, committed = list(llm.tokens), llm.snapshot()
    second = [*first, {"role": "assistant", "content": answer},
              {"role": "user", "content": "What's the weather like in Paris?"}]
    cut = reply(llm, runner, second, commit=False)
    assert parse_tool_calls(cut)[1][0].name == "get_weather" and len(llm.tokens) > len(committed_tokens)
    llm.rollback()  # a barge-in cut the reply with the call
    assert llm.tokens == committed_tokens
    for name, array in committed.state.items():
        np.testing.assert_array_equal(llm.state[name], array)
    third = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Tell me a joke."}]
    ours = [p.token_id for p in llm.generate(third, MAX_NEW_TOKENS, constraint=runner.constraint(third))]
    fresh = LlmSession.from_manifest(manifest)
    expected = [p.token_id for p in fresh.generate(third, MAX_NEW_TOKENS, constraint=runner.constraint(third))]
    assert ours == expected
