"""Act while listening: tool calls from the cascade's reply convention, run without blocking."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import espeak
from scripted import install

from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.cascade.pipeline import CascadePipeline
from edgevoice.runtime.cascade.session import DuplexSession, SessionOptions
from edgevoice.runtime.tools import Tool

pytestmark = pytest.mark.slow
RATE = 16000
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def weather_script(messages):
    last = messages[-1]
    if last["role"] == "tool":
        body = json.loads(last["content"])
        return f"Here is the weather: {body['result']}." if body["ok"] else "Sorry, the weather service failed."
    if "weather" in last["content"].lower():
        return '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call> Let me check.'
    return "It is ten past three in the afternoon."


def session_for(package, recording, tool, **options):
    pipeline = CascadePipeline(package)
    llm = install(pipeline, weather_script)
    io = FileIO(recording, recording_rate=RATE, mic_rate=RATE, speaker_rate=22050, pace=options.pop("pace", None))
    session = DuplexSession(pipeline, io, SessionOptions(**options))
    session.tools.register(tool)
    return session, io, llm


def first(session, kind, **match):
    for event in session.events.history(kind):
        if all(event.data.get(k) == v for k, v in match.items()):
            return event
    raise AssertionError(f"no {kind} event with {match}: {[e.kind for e in session.events.history()]}")


def test_slow_tool_does_not_delay_listening_and_its_result_is_spoken(cascade_package):
    # Real time (paced clock, stages on threads): the tool sleeps 5 s of wall-clock time.
    q1, q2 = espeak("What is the weather in Paris?"), espeak("What time is it?")
    # The second question comes after the short "Let me check." and while the tool still runs.
    recording = np.concatenate([silence(0.3), q1, silence(3.2), q2, silence(1.0)])
    tool = Tool("weather", lambda city: (time.sleep(5.0), f"sunny in {city}")[1], parameters=CITY, timeout_s=20)
    session, io, llm = session_for(cascade_package, recording, tool, pace=1.0)
    with io:
        session.run(len(recording) / RATE + 7.0)
    session.close()
    call = first(session, ev.TOOL_CALL, name="weather")
    result = first(session, ev.TOOL_RESULT, name="weather")
    assert 4.9 <= result.time - call.time <= 7.0  # it ran for its 5 s in the background
    # The second question was heard and its turn ended on time while the tool was still running,
    # then it was understood and answered.
    q2_end = session.events.history(ev.USER_SPEECH_END)[1]
    assert q2_end.time < result.time
    assert q2_end.data["speech_end"] == pytest.approx((0.3 * RATE + len(q1) + 3.2 * RATE + len(q2)) / RATE, abs=0.25)
    assert q2_end.time - q2_end.data["speech_end"] < 0.8  # endpointing was not held up by the tool
    assert any("time" in e.data["text"].lower() for e in session.events.history(ev.TRANSCRIPT))
    assert "It is ten past three in the afternoon." in [e.data["text"] for e in session.events.history(ev.REPLY_TEXT)]
    answers = session.events.history(ev.REPLY_TEXT)
    spoken_result = [e for e in answers if "sunny in Paris" in e.data["text"]]
    assert spoken_result and spoken_result[0].time > result.time
    assert any(e.time > spoken_result[0].time for e in session.events.history(ev.AGENT_DONE))  # it was played
    tool_messages = [m for m in llm.prompts[-1] if m["role"] == "tool"]
    assert tool_messages and json.loads(tool_messages[0]["content"])["result"] == "sunny in Paris"


def test_a_failing_tool_is_reported_and_the_conversation_continues(cascade_package):
    q1, q2 = espeak("What is the weather in Paris?"), espeak("What time is it?")
    recording = np.concatenate([silence(0.3), q1, silence(4.0), q2, silence(1.0)])

    def broken(city):
        raise ConnectionError("weather service unreachable")

    session, io, _ = session_for(cascade_package, recording, Tool("weather", broken, parameters=CITY), threaded=False)
    with io:
        session.run(len(recording) / RATE + 6.0)
    session.close()
    error = first(session, ev.TOOL_ERROR, name="weather")
    assert "unreachable" in error.data["error"]
    texts = [e.data["text"] for e in session.events.history(ev.REPLY_TEXT)]
    assert "Sorry, the weather service failed." in texts
    assert "It is ten past three in the afternoon." in texts  # the next question was still answered
    # No stage failed (a package exported before the end-of-turn model also says so, stage "turn").
    assert not [w for w in session.events.history(ev.WARNING) if w.data.get("stage") != "turn"]


def test_tool_call_tags_are_never_spoken(cascade_package):
    q1 = espeak("What is the weather in Paris?")
    recording = np.concatenate([silence(0.3), q1, silence(1.0)])
    tool = Tool("weather", lambda city: f"sunny in {city}", parameters=CITY)
    session, io, llm = session_for(cascade_package, recording, tool, threaded=False)
    with io:
        session.run(len(recording) / RATE + 6.0)
    session.close()
    first_reply = session.events.history(ev.REPLY_TEXT)[0].data["text"]
    assert first_reply == "Let me check."
    assert first(session, ev.TOOL_CALL, name="weather").data["arguments"] == {"city": "Paris"}
    # The thinker asked for the router's forced opening (the scripted model ignores it).
    assert llm.constraints[0].prefix == '<tool_call>{"name": "weather", "arguments": {'
    assert llm.commits >= 2 and llm.rollbacks == 0 and llm.tokens == llm.committed  # every reply was committed


def test_the_real_model_calls_the_tool_and_speaks_its_result(cascade_package):
    # No script: SmolLM2 itself, the router deciding and the grammar writing the arguments.
    recording = np.concatenate([silence(0.3), espeak("What is the weather in Paris?"), silence(1.0)])
    pipeline = CascadePipeline(cascade_package)
    io = FileIO(recording, recording_rate=RATE, mic_rate=RATE, speaker_rate=22050)
    session = DuplexSession(pipeline, io, SessionOptions(threaded=False))
    session.tools.register(Tool("weather", lambda city: f"sunny and 21 degrees in {city}",
                                "Current weather conditions for a city.", CITY))
    with io:
        session.run(len(recording) / RATE + 8.0)
    session.close()
    assert first(session, ev.TOOL_CALL, name="weather").data["arguments"] == {"city": "Paris"}
    result = first(session, ev.TOOL_RESULT, name="weather")
    assert len(session.events.history(ev.TOOL_CALL)) == 1  # the follow-up may not call again
    replies = session.events.history(ev.REPLY_TEXT)
    assert replies[0].data["text"] == ""  # the call is never spoken
    spoken = [e for e in replies if e.time >= result.time and e.data["text"]]
    assert spoken and "<tool_call>" not in spoken[0].data["text"]
