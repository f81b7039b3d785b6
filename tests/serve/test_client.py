"""The Python client's handling of what a server sends, its end-of-recording rule and its reconnects (no engines)."""

from __future__ import annotations

import asyncio
import socket
import threading
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


def test_a_mic_thread_catching_up_in_a_burst_loses_no_recording_but_a_live_mic_stays_bounded():
    from edgevoice.audio.app_io import AppAudioIO

    def burst(io, frames: int) -> tuple[int, int]:
        client = Client("ws://127.0.0.1:1")

        async def offer_all():
            link = _Link(client, io, None)
            link.connected = True
            for i in range(frames):  # a stalled pump's backlog, queued before the sender runs once
                link._offer(bytes([i % 256]) * 640)
            return link.frames.qsize()

        return asyncio.run(offer_all()), client.counts["frames_dropped"]

    assert burst(file_io(), 120) == (120, 0)  # 2.4 s of a recording: every frame still goes out
    live = AppAudioIO(input_rate=16000, output_rate=24000)
    queued, dropped = burst(live, 120)
    assert queued == 50 and dropped == 70  # 1 s kept: the user's latest words, not old ones


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


class LingeringFront:
    """A websockets server behind a TCP front that, like some load balancers and proxies, keeps the
    client's side open for ``linger_s`` after the server has closed its own: the server sends its
    close frame 0.3 s after ``ready`` and notes when (``closed_at``, monotonic)."""

    def __init__(self, linger_s: float = 5.0):
        self.linger_s, self.closed_at, self.port = linger_s, None, None
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def __enter__(self) -> LingeringFront:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _conversation(self, connection) -> None:
        await connection.recv()  # hello
        await connection.send(wire.ready_message("s1", 16000, 24000, 1, "tiny"))
        drain = asyncio.create_task(self._drain(connection))
        await asyncio.sleep(0.3)
        self.closed_at = time.monotonic()
        await connection.close(wire.GOING_AWAY, "restarting")
        drain.cancel()

    @staticmethod
    async def _drain(connection) -> None:
        async for _ in connection:
            pass

    async def _pipe(self, reader, writer, linger_s: float) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        await asyncio.sleep(linger_s)  # the front drops its other side only later
        writer.close()

    async def _front(self, reader, writer) -> None:
        back_reader, back_writer = await asyncio.open_connection("127.0.0.1", self._back_port)
        self._pipes = [asyncio.create_task(self._pipe(reader, back_writer, 0.0)),
                       asyncio.create_task(self._pipe(back_reader, writer, self.linger_s))]

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        async with serve(self._conversation, "127.0.0.1", 0, compression=None) as server:
            self._back_port = server.sockets[0].getsockname()[1]
            front = await asyncio.start_server(self._front, "127.0.0.1", 0)
            self.port = front.sockets[0].getsockname()[1]
            self._ready.set()
            await asyncio.to_thread(self._stop.wait)
            front.close()


def test_a_server_close_is_seen_at_once_even_when_a_front_holds_the_tcp_connection_open():
    """The server's close frame ends the conversation for the client: it does not wait for the TCP
    connection to drop (websockets' close_timeout, 2 s here before), which a proxy may hold open."""
    with LingeringFront(linger_s=5.0) as front:
        client = Client(f"ws://127.0.0.1:{front.port}", reconnect=ReconnectPolicy(tries=0))
        lost = threading.Event()
        seen = {}

        def on_connection(event):
            seen.setdefault(event.data["state"], (time.monotonic(), event.data))
            if event.data["state"] == "lost":
                lost.set()

        client.on(CONNECTION, on_connection)
        client.start(file_io(10.0))
        assert lost.wait(8), seen
        lost_at, data = seen["lost"]
        with pytest.raises(EdgevoiceError, match="could not reconnect in 0 tries"):
            client.wait(5)
    assert (data["code"], data["reason"]) == (wire.GOING_AWAY, "restarting")
    assert lost_at - front.closed_at < 0.5, f"the close was seen {lost_at - front.closed_at:.2f} s after it was sent"
