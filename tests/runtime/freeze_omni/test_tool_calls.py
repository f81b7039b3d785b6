"""Tools in a Freeze-Omni conversation, on the `tiny` package with a scripted reply stream.

Random weights cannot choose to call a tool, so the LLM's sampling is replaced by a script that
writes chosen texts through tiny's byte-level tokenizer (ids 0..255 are UTF-8 bytes, the reply
ends with <|im_end|>); everything else -- gate, listen path, LLM cache, speech decoder, codec,
speaker, tool runner -- runs for real on the virtual clock.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import espeak

import edgevoice.runtime.freeze_omni.session as fo_session
from edgevoice import Agent
from edgevoice.audio.io import FileIO
from edgevoice.errors import EdgevoiceError
from edgevoice.runtime import events as ev
from edgevoice.runtime.freeze_omni.head_policy import HeadTurnPolicy
from edgevoice.runtime.freeze_omni.pipeline import FreezeOmniPipeline
from edgevoice.runtime.freeze_omni.session import FoSessionOptions, FreezeOmniSession
from edgevoice.runtime.freeze_omni.speak import SpeechOptions
from edgevoice.runtime.freeze_omni.tools import (
    CallWithholder,
    ReplyToken,
    tool_turn_ids,
)
from edgevoice.runtime.tools import Tool, ToolCall, ToolOutcome

RATE, OUT_RATE = 16000, 24000
CALL = '<tool_call>{"name": "get_time", "arguments": {"city": "Paris"}}</tool_call>'
FIRST_REPLY = f"Let me look. {CALL}"
FOLLOW_UP = "It is noon in Paris."
TIME_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


class ScriptedReplies(FreezeOmniPipeline):
    """The real pipeline, whose sampler writes ``replies`` in turn (then ends every reply at once),
    and which records the segments it hands to the speech decoder."""

    def __init__(self, *args, replies: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.replies, self.voiced = list(replies), []
        self._script = iter(())

    def respond(self, context):
        text = self.replies.pop(0) if self.replies else ""
        self._script = iter([*self.tokenizer.encode(text), self.llm.facts.eod_id])
        return super().respond(context)

    def _sample(self, logits, rng):
        return next(self._script)

    def speak(self, segment, marks):
        self.voiced.append(segment)
        return super().speak(segment, marks)


class RespondAt(HeadTurnPolicy):
    """The real policy; the head's verdict is "respond" at the third listened chunk of a turn."""

    def _open(self, onset):
        self.seen = 0
        return super()._open(onset)

    def head(self, probs):
        if self.listening:
            self.seen += 1
            probs = np.array([0.1, 0.8, 0.1] if self.seen == 3 else [0.8, 0.1, 0.1], np.float32)
        return super().head(probs)


def converse(package, tools):
    """The user speaks 1 s (noise through the energy gate), then is quiet for 12 s."""
    rng = np.random.default_rng(0)
    recording = np.concatenate([np.zeros(RATE // 2), rng.standard_normal(RATE) * 0.1, np.zeros(12 * RATE)])
    recording = recording.astype(np.float32)
    pipeline = ScriptedReplies(package, speech=SpeechOptions(max_tokens=40), replies=[FIRST_REPLY, FOLLOW_UP])
    io = FileIO(recording, recording_rate=RATE, mic_rate=RATE, speaker_rate=OUT_RATE)
    options = FoSessionOptions(threaded=False, echo_cancellation=False, gate="energy")
    session = FreezeOmniSession(pipeline, io, options, policy=RespondAt(), tools=tools)
    with io:
        session.run(len(recording) / RATE)
    session.close()
    return session, pipeline


def test_a_tool_call_is_withheld_run_fed_back_and_answered(tiny_package):
    """User asks -> the reply calls a tool (never voiced) -> the tool runs -> its result enters the
    LLM cache as a ``tool`` turn -> the follow-up is spoken once the first reply is over."""
    calls = []

    def get_time(city):
        calls.append(city)
        return "12:00"

    session, pipeline = converse(tiny_package, [Tool("get_time", get_time, "Time in a city", TIME_SCHEMA)])
    history = session.events.history()
    kinds = [e.kind for e in history]
    assert calls == ["Paris"]
    call = next(e for e in history if e.kind == ev.TOOL_CALL)
    assert call.data["name"] == "get_time" and call.data["arguments"] == {"city": "Paris"}
    result = next(e for e in history if e.kind == ev.TOOL_RESULT)
    assert result.data["result"] == "12:00"
    # The speech decoder got the spoken words and nothing of the call: no text, no ids of it.
    voiced = "".join(segment.text for segment in pipeline.voiced)
    assert "Let me look." in voiced and FOLLOW_UP in voiced and "tool_call" not in voiced and "{" not in voiced
    assert all(pipeline.tokenizer.encode("{")[0] not in segment.ids for segment in pipeline.voiced)
    replies = [e.data["text"] for e in history if e.kind == ev.REPLY_TEXT]
    assert [r.strip() for r in replies] == ["Let me look.", FOLLOW_UP]
    # The follow-up waits for the floor: it starts after the first reply was played out.
    first_done = kinds.index(ev.AGENT_DONE)
    assert kinds.index(ev.TOOL_RESULT) < [i for i, k in enumerate(kinds) if k == ev.FIRST_TOKEN][1]
    assert [i for i, k in enumerate(kinds) if k == ev.FIRST_TOKEN][1] > first_done
    assert kinds.count(ev.AGENT_DONE) == 2
    # The result is in the committed conversation as the tool turn's tokens, then the follow-up.
    outcome = ToolOutcome(ToolCall("get_time", {"city": "Paris"}, 1), ok=True, result="12:00")
    entries = pipeline.conversation.entries()
    tool_rows = [rows for _, kind, rows in entries if kind == "tool"]
    assert len(tool_rows) == 1
    np.testing.assert_array_equal(tool_rows[0], pipeline.llm.embed(tool_turn_ids(pipeline.tokenizer, outcome)))
    assert [kind for _, kind, _ in entries][-1] == "reply" and session.summary()["tool_calls"] == 1


def test_the_system_prompt_teaches_the_tools(tiny_package):
    """Registered tools are listed at the end of the system turn, as the cascade's prompt does."""
    session, pipeline = converse(tiny_package, [Tool("get_time", lambda city: "12:00", "Time", TIME_SCHEMA)])
    system = next(rows for _, kind, rows in pipeline.conversation.entries() if kind == "system")
    ids = list(pipeline.llm.facts.system_prompt_ids) + pipeline.tokenizer.encode("\n\n" + session.tools.prompt())
    np.testing.assert_array_equal(system, pipeline.llm.embed(ids))


def test_an_unknown_tool_is_reported_and_answered(tiny_package):
    """A call to a tool nobody registered is not spoken; its error re-enters like a result."""
    session, pipeline = converse(tiny_package, [Tool("other", lambda: 1)])
    errors = session.events.history(ev.TOOL_ERROR)
    assert len(errors) == 1 and "unknown tool 'get_time'" in errors[0].data["error"]
    assert [kind for _, kind, _ in pipeline.conversation.entries()].count("tool") == 1


def _tokens(text_pieces):
    return [ReplyToken(i, np.full(2, i, np.float32), piece) for i, piece in enumerate(text_pieces)]


def test_withholder_releases_a_false_alarm_and_drops_a_call():
    """A "<" that does not open a call is voiced once that is clear; a call's tokens never are."""
    withholder = CallWithholder()
    released = []
    calls = []
    for token in _tokens(["Hi ", "<", "b> ", "ok ", "<tool", "_call>", '{"name": "x"}', "</tool_call>", " bye"]):
        out, found = withholder.push(token)
        released += [t.text for t in out]
        calls += found
    out, found = withholder.finish()
    released += [t.text for t in out]
    assert "".join(released) == "Hi <b> ok  bye" and [c.name for c in calls] == ["x"]


def test_withholder_drops_an_unclosed_call_at_the_end():
    withholder = CallWithholder()
    pushed = [withholder.push(token) for token in _tokens(["Sure. ", "<tool_call>", '{"na'])]
    out, calls = withholder.finish()
    assert [[t.text for t in released] for released, _ in pushed] == [["Sure. "], [], []]
    assert out == [] and calls == []


def test_agent_tool_works_on_a_freeze_omni_package(tiny_package, monkeypatch):
    """``Agent.tool`` on `tiny`, as on the cascade: a spoken question (Silero opens the gate), the
    scripted reply calls the registered function, and the follow-up is spoken."""
    monkeypatch.setattr(fo_session, "HeadTurnPolicy", RespondAt)
    agent = Agent(tiny_package.directory)
    agent.pipeline = ScriptedReplies(tiny_package, speech=SpeechOptions(max_tokens=40),
                                     replies=[FIRST_REPLY, FOLLOW_UP])

    @agent.tool(description="Time in a city", parameters=TIME_SCHEMA)
    def get_time(city):
        return f"noon in {city}"

    speech = espeak("What time is it in Paris?")
    recording = np.concatenate([np.zeros(RATE // 2, np.float32), speech, np.zeros(10 * RATE, np.float32)])
    session = agent.run(FileIO(recording, recording_rate=RATE, mic_rate=RATE, speaker_rate=OUT_RATE))
    kinds = [e.kind for e in session.events.history()]
    assert [e.data["result"] for e in session.events.history(ev.TOOL_RESULT)] == ["noon in Paris"]
    assert kinds.count(ev.AGENT_DONE) == 2 and kinds[-1] == ev.SESSION_END
    assert "tool_call" not in "".join(segment.text for segment in agent.pipeline.voiced)


def test_agent_refuses_tools_on_a_package_without_tokenizer(tiny_package):
    agent = Agent(tiny_package.directory)
    agent.pipeline.tokenizer = None  # as a package exported without one
    with pytest.raises(EdgevoiceError, match="no tokenizer"):
        agent.tool(name="noop")(lambda: None)
