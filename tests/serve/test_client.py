"""The Python client's handling of what a server sends, its end-of-recording rule and its reconnects (no engines)."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest

from edgevoice.audio.io import FileIO
from edgevoice.client import CONNECTION, Client, ReconnectPolicy, _Activity, _Link
from edgevoice.errors import EdgevoiceError
from edgevoice.runtime import events as ev
from edgevoice.runtime.events import Event
from edgevoice.serve import protocol as wire


def file_io(seconds: float = 1.0) -> FileIO:
    return FileIO(np.zeros(int(seconds * 16000), np.float32), recording_rate=16000, speaker_rate=24000, pace=1.0)


def test_audio_goes_to_the_speaker_a_flush_drops_it_at_once_and_events_reach_subscribers():
    client, io = Client("ws://127.0.0.1:1"), file_io()
    seen = []
    client.on(ev.REPLY_TEXT, seen.append)

    async def receive():
        link = _Link(client, io, None)
        link._receive(wire.float_to_pcm16(np.full(480, 0.25, np.float32)))
        assert io.speaker.readable == 480
        link._receive(wire.FLUSH_MESSAGE)
        link._receive(wire.event_message(Event(2.0, ev.REPLY_TEXT, 1, {"text": "Paris."})))
        link._receive(wire.event_message(Event(3.0, ev.SESSION_END, 1, {"replies": 1, "reason": "bye"})))

    asyncio.run(receive())
    assert io._flush_requested  # the io drops its queue at its very next block
    assert client.counts["flushes"] == 1 and client.counts["frames_received"] == 1
    assert seen == [Event(2.0, ev.REPLY_TEXT, 1, {"text": "Paris."})]
    assert client.summary()["replies"] == 1 and client.summary()["reason"] == "bye"


def test_a_recording_is_done_only_once_the_agent_has_answered_and_gone_quiet():
    activity = _Activity()
    activity.last_event = activity.last_sound = time.monotonic() - 10
    assert activity.idle(2.0)
    for kind, data, idle in ((ev.USER_SPEECH_START, {}, False), (ev.TURN_TAKEN, {}, False),
                             (ev.TOOL_CALL, {}, False), (ev.AGENT_DONE, {}, False),  # the tool is still out
                             (ev.TOOL_RESULT, {}, False), (ev.AGENT_DONE, {}, True)):
        activity.event(Event(0.0, kind, 1, data))
        activity.last_event = time.monotonic() - 10  # as if long ago: only the state decides
        assert activity.idle(2.0) is idle, kind
    activity.sound(wire.float_to_pcm16(np.full(10, 0.5, np.float32)))
    assert not activity.idle(2.0)  # the agent's audio is still arriving


def test_a_recording_needs_real_time_and_the_url_needs_a_websocket_scheme():
    with pytest.raises(EdgevoiceError, match="pace=1.0"):
        Client("ws://127.0.0.1:1").start(FileIO(np.zeros(160, np.float32), recording_rate=16000))
    with pytest.raises(EdgevoiceError, match="ws://"):
        Client("http://127.0.0.1:8765")
    assert Client("ws://127.0.0.1:8765").url == "ws://127.0.0.1:8765/ws"
    assert [ReconnectPolicy().delay(n) for n in (1, 2, 3, 6)] == [0.5, 1.0, 2.0, 8.0]


def test_no_server_means_bounded_tries_then_a_clear_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = Client(f"ws://127.0.0.1:{port}", reconnect=ReconnectPolicy(tries=2, first_delay_s=0.01))
    client.start(file_io())
    with pytest.raises(EdgevoiceError, match="could not reconnect in 2 tries"):
        client.wait(30)
    states = [e.data["state"] for e in client.events.history(CONNECTION)]
    assert states == ["lost", "reconnecting", "lost", "reconnecting", "lost", "gave_up"]
