"""The live view of `edgevoice talk` renders what the session and its events say."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from edgevoice.audio.io import AudioStats
from edgevoice.cli.talk_view import LiveState, level_meter, render
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import Event
from edgevoice.runtime.turns import TurnState


def fake_session(state: TurnState, paused: bool = False):
    stats = AudioStats(xruns=2, clipped_samples=5, output_starved=7)
    audio = SimpleNamespace(stats=stats, mic=SimpleNamespace(overrun_samples=160))
    return SimpleNamespace(policy=SimpleNamespace(state=state, paused=paused), level=0.05, turn=3, io=audio)


def rendered(panel) -> str:
    console = Console(file=io.StringIO(), width=120)
    console.print(panel)
    return console.file.getvalue()


def test_the_view_shows_state_words_latency_and_xruns():
    state = LiveState()
    for event in (Event(1.0, ev.PARTIAL_TRANSCRIPT, 3, {"text": "what is the"}),
                  Event(2.0, ev.USER_SPEECH_END, 3, {}),
                  Event(2.0, ev.TRANSCRIPT, 3, {"text": "What is the time?"}),
                  Event(2.4, ev.REPLY_TEXT, 3, {"text": "It is noon."}),
                  Event(2.65, ev.FIRST_AUDIO, 3, {}),
                  Event(2.7, ev.TOOL_CALL, 3, {"name": "clock"})):
        state.on_event(event)
    text = rendered(render(fake_session(TurnState.SPEAKING), state))
    assert "speaking" in text and "turn 3" in text
    assert "What is the time?" in text and "It is noon." in text
    assert "650 ms" in text and "tool_call: clock" in text
    assert "xruns 2" in text and "lost 160" in text and "clipped 5" in text and "starved 7" in text


def test_a_cancelled_reply_does_not_replace_the_one_shown_and_pauses_are_marked():
    state = LiveState()
    state.on_event(Event(1.0, ev.REPLY_TEXT, 1, {"text": "Paris."}))
    state.on_event(Event(2.0, ev.REPLY_TEXT, 2, {"text": "dropped", "cancelled": True}))
    text = rendered(render(fake_session(TurnState.SPEAKING, paused=True), state))
    assert "Paris." in text and "dropped" not in text and "(paused)" in text


def test_level_meter_spans_minus_60_to_0_dbfs():
    assert "█" not in level_meter(1e-7).plain and "·" not in level_meter(1.0).plain
    assert "-26.0 dBFS" in level_meter(0.05).plain
