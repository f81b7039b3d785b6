"""The words' end-of-turn vote with the package's real LLM, on the written calibration list that
chose ``TurnOptions.text_eot_threshold`` (tests/data/text_turn_calibration.json; none of its
requests is in the turn-taking benchmark or the eval scripts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgevoice.runtime.cascade.pipeline import CascadePipeline
from edgevoice.runtime.cascade.text_turn import (
    end_token_ids,
    without_trailing_punctuation,
)
from edgevoice.runtime.cascade.thinking import CascadeThinker
from edgevoice.runtime.tools import Tool, ToolRunner
from edgevoice.runtime.turns import TurnOptions
from edgevoice.runtime.workers import Worker

CALIBRATION = json.loads((Path(__file__).parents[2] / "data" / "text_turn_calibration.json").read_text())


@pytest.fixture(scope="module")
def thinker(cascade_package):
    inline = Worker("think", False, lambda stage, exc: None)
    return CascadeThinker(CascadePipeline(cascade_package), inline, inline, lambda *a, **k: None, 22050)


def test_trailing_punctuation_is_not_the_words():
    assert without_trailing_punctuation("I would like to know...") == "I would like to know"
    assert without_trailing_punctuation("Is it open? ") == "Is it open"
    assert without_trailing_punctuation("Wait, no -") == "Wait, no"
    assert without_trailing_punctuation(" ... ") == ""


def test_the_end_tokens_are_single_token_marks_and_the_stop_ids():
    table = {".": [5], "?": [6], "!": [7, 8]}  # "!" split in two: not readable from one step
    assert end_token_ids(lambda text: table[text], [1, 2]) == [1, 2, 5, 6]


@pytest.fixture(scope="module")
def kiosk_thinker(cascade_package):
    """A deployment's own system prompt and a registered tool: a longer, different prompt."""
    inline = Worker("think", False, lambda stage, exc: None)
    pipeline = CascadePipeline(cascade_package, system_prompt="You are the information desk robot of a shopping "
                                                              "mall. Be brief and friendly.")
    tools = ToolRunner(lambda outcome: None)
    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools.register(Tool("weather", lambda city: "sunny", parameters=city, description="Current weather in a city"))
    return CascadeThinker(pipeline, inline, inline, lambda *a, **k: None, 22050, tools)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["thinker", "kiosk_thinker"])
def test_the_threshold_separates_finished_from_cut_requests(which, request):
    thinker = request.getfixturevalue(which)
    threshold = TurnOptions().text_eot_threshold
    finished = {text: thinker.words_end_probability(text) for text in CALIBRATION["finished"]}
    cut = {text: thinker.words_end_probability(text) for text in CALIBRATION["cut"]}
    held = [text for text, prob in finished.items() if prob < threshold]
    let_through = [text for text, prob in cut.items() if prob >= threshold]
    assert not held, held  # a finished request held costs the user up to eot_max_silence_ms
    assert len(let_through) <= 1, let_through  # one in 30 cut requests scores like a finished one
    assert min(finished.values()) > 3 * threshold  # a margin, not a knife edge


@pytest.mark.slow
def test_the_vote_does_not_read_whispers_punctuation(thinker):
    # The second call reuses the first one's cached prompt, so onnxruntime's 4-bit kernels take another
    # summation order (one row instead of the whole prompt): equal up to float32 rounding.
    with_mark = thinker.words_end_probability("Open the garage door.")
    assert with_mark == pytest.approx(thinker.words_end_probability("Open the garage door"), rel=1e-5)
    assert thinker.words_end_probability("") is None


def counting_llm_calls(llm) -> list[int]:
    """Tokens fed by each LLM engine call from now on."""
    calls, run = [], llm._run

    def counted(runner, ids):
        calls.append(len(ids))
        return run(runner, ids)

    llm._run = counted
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("which", ["thinker", "kiosk_thinker"])
def test_the_vote_and_the_replys_prefill_share_one_llm_call(which, request):
    """The vote read from the reply's prompt call equals the vote scored on its own, and the
    reply's first token then needs no prefill call."""
    thinker = request.getfixturevalue(which)
    llm = thinker.agent.llm
    for transcript in ("What is the capital of France?", "I would like to know", "Turn on the lights."):
        llm.reset()
        alone = thinker.words_end_probability(transcript)
        user = {"role": "user", "content": transcript}
        messages = thinker._context(user)
        prompt = llm.prompt_ids(messages, thinker.agent.max_new_tokens)
        fresh_logits = llm.prepare(prompt).copy()

        llm.reset()
        thinker.warm_up()  # as a session does before the user speaks: the system prompt is cached
        calls = counting_llm_calls(llm)
        try:
            shared = thinker.words_end_probability(transcript, reply_messages=messages)
            assert len(calls) == 1 and llm.tokens == prompt  # one call: the words and the template
            logits = llm.prepare(prompt)
            assert len(calls) == 1  # the reply's prefill was that call
        finally:
            del llm._run
        assert shared == pytest.approx(alone, rel=1e-4, abs=1e-7)
        assert np.argmax(logits) == np.argmax(fresh_logits)
        np.testing.assert_allclose(logits, fresh_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_one_call_is_refused_where_the_tail_logits_do_not_reach(thinker):
    llm = thinker.agent.llm
    llm.reset()
    prompt = llm.tokenizer.encode("Tell me a story about a dragon and a knight who became friends.")
    assert llm.score_then_prepare(prompt, len(prompt) - llm.tail, [0]) is None  # the row is not in the tail
    assert llm.tokens == []  # nothing was fed
    assert llm.score_then_prepare(prompt, 0, [0]) is None
    assert llm.score_then_prepare(prompt, len(prompt) - 2, [0]) is not None
    # The cache held the prompt already: the scored position is fed again, not the whole prompt.
    calls = counting_llm_calls(llm)
    try:
        assert llm.score_then_prepare(prompt, len(prompt) - 3, [0]) is not None
    finally:
        del llm._run
    assert calls == [4]
