"""`edgevoice serve` over loopback: concurrent isolated conversations, barge-in, tools, refusals, reconnects.

One server (one load of the cascade package) serves the whole module; every conversation streams
at real time, so each is kept to a few seconds of speech.
"""

from __future__ import annotations

import asyncio
import json
import socket as socket_module
import threading
import time

import numpy as np
import pytest
from conftest import espeak

from edgevoice.audio.io import FileIO
from edgevoice.client import CONNECTION, Client
from edgevoice.runtime import events as ev
from edgevoice.runtime.cascade.session import SessionOptions
from edgevoice.serve import protocol as wire
from edgevoice.serve.conversation import Limits
from edgevoice.serve.server import Server

pytestmark = pytest.mark.slow
RATE = 16000
FRAME = 320  # 20 ms
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
SEND_QUEUE = 64


@pytest.fixture(scope="module")
def server(cascade_package):
    # A headset, as a robot with its own echo canceller: WebRTC's suppressor would otherwise mute
    # the first word of a barge-in while the agent talks (see tests/runtime/cascade/test_session.py).
    server = Server(cascade_package.directory, port=0, max_sessions=2, limits=Limits(send_queue=SEND_QUEUE),
                    options=SessionOptions(echo_cancellation=False))
    server.weather_calls = []

    @server.tool(description="Current weather conditions for a city.", parameters=CITY)
    def weather(city):
        server.weather_calls.append(city)
        return f"sunny and 21 degrees in {city}"

    with server.start():
        yield server


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def recording(text: str, lead_s: float = 0.5) -> np.ndarray:
    return np.concatenate([silence(lead_s), espeak(text), silence(0.5)])


def client_on(server, audio: np.ndarray) -> tuple[Client, FileIO]:
    client = Client(server.ws_url, token=server.token, quiet_s=1.5)
    return client, FileIO(audio, recording_rate=RATE, mic_rate=RATE, speaker_rate=24000, pace=1.0)


def said(client: Client, kind: str) -> list[str]:
    return [e.data["text"] for e in client.events.history(kind) if e.data.get("text")]


def everything(client: Client) -> str:
    return " ".join(json.dumps(e.data) for e in client.events.history()).lower()


def turn_log(client: Client) -> str:
    """The conversation's turn-taking and text events, for a failure message."""
    kinds = (ev.USER_SPEECH_START, ev.USER_SPEECH_END, ev.TURN_TAKEN, ev.TRANSCRIPT, ev.TEXT_END_OF_TURN,
             ev.BARGE_IN, ev.REPLY_TEXT, ev.FIRST_AUDIO, ev.AGENT_DONE)
    lines = [f"{e.time:.3f} {e.kind} {json.dumps(e.data, default=str)}" for e in client.events.history() if e.kind in kinds]
    return "\n".join([*lines, f"client counts {client.counts}"])


def wait_until_free(server, timeout: float = 30.0) -> None:
    """Conversations of an earlier test end on the server a little after their clients left."""
    deadline = time.monotonic() + timeout
    while server.conversations.active and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.conversations.active == 0


def test_two_concurrent_conversations_get_their_own_answers_and_tools(server):
    wait_until_free(server)
    japan, japan_io = client_on(server, recording("What is the capital of Japan?"))
    weather, weather_io = client_on(server, recording("What is the weather in Paris?"))
    japan.start(japan_io)
    weather.start(weather_io)
    assert japan.wait(180) and weather.wait(180)
    assert len(set(japan.session_ids + weather.session_ids)) == 2
    assert "japan" in said(japan, ev.TRANSCRIPT)[-1].lower() and "Tokyo" in " ".join(said(japan, ev.REPLY_TEXT)), \
        turn_log(japan)
    # The tool registered on the server ran for the conversation that asked, and only there.
    [call] = weather.events.history(ev.TOOL_CALL)
    assert call.data["name"] == "weather" and call.data["arguments"] == {"city": "Paris"}
    assert weather.events.history(ev.TOOL_RESULT)[0].data["result"] == "sunny and 21 degrees in Paris"
    assert server.weather_calls == ["Paris"]
    assert said(weather, ev.REPLY_TEXT)  # the result was answered
    assert not japan.events.history(ev.TOOL_CALL) and not japan.events.history(ev.TOOL_RESULT)
    # Nothing of one conversation reached the other.
    assert "weather" not in everything(japan) and "sunny" not in everything(japan)
    assert "japan" not in everything(weather) and "tokyo" not in everything(weather)
    for io in (japan_io, weather_io):
        assert np.abs(io.played()).max() > 0.05  # each heard its agent speak
    assert japan.summary()["reason"] == "bye" and japan.summary()["replies"] >= 1


async def scripted_barge_in(server) -> list[tuple]:
    """A raw client: asks, and speaks over the answer 0.5 s after its first audio; the log of what came back."""
    from websockets.asyncio.client import connect

    question = recording("What is the capital of France?")
    interruption = espeak("Wait, tell me about dogs instead.")
    log: list[tuple] = []  # ("audio", peak) | ("flush",) | ("event", kind)
    first_audio: list[float] = []
    async with connect(server.ws_url, additional_headers={"Authorization": f"Bearer {server.token}"}) as socket:
        await socket.send(wire.hello_message(RATE, RATE))
        assert json.loads(await socket.recv())["type"] == "ready"

        async def read() -> None:
            async for message in socket:
                if isinstance(message, bytes):
                    log.append(("audio", int(np.abs(np.frombuffer(message, "<i2")).max())))
                    continue
                body = json.loads(message)
                log.append(("flush",) if body["type"] == "flush" else ("event", body["event"]["kind"]))
                if log[-1] == ("event", ev.FIRST_AUDIO):
                    first_audio.append(time.monotonic())

        reader = asyncio.create_task(read())
        audio, started, sent = question, time.monotonic(), 0
        while time.monotonic() - started < 60:
            if audio is question and sent >= len(question) and first_audio and time.monotonic() - first_audio[0] > 0.5:
                audio = np.concatenate([np.zeros(sent, np.float32), interruption, silence(1.0)])  # from now on
            frame = audio[sent:sent + FRAME] if sent < len(audio) else np.zeros(FRAME, np.float32)
            await socket.send(wire.float_to_pcm16(np.pad(frame, (0, FRAME - len(frame)))))
            sent += FRAME
            if ("event", ev.CANCEL_DONE) in log and sent >= len(audio):
                break
            await asyncio.sleep(max(0.0, started + sent / RATE - time.monotonic()))
        await socket.send(wire.BYE_MESSAGE)
        await asyncio.wait_for(reader, 30)
    return log


def test_a_barge_in_over_the_socket_flushes_before_the_barge_in_event(server):
    wait_until_free(server)
    log = asyncio.run(scripted_barge_in(server))
    assert ("event", ev.CANCEL_DONE) in log, [entry for entry in log if entry[0] != "audio"]
    flush = log.index(("flush",))
    barge_in = log.index(("event", ev.BARGE_IN))
    assert log.index(("event", ev.FIRST_AUDIO)) < flush < barge_in
    # Every frame after the flush is silence until the agent's next answer starts.
    after = log[flush + 1:]
    quiet_until = after.index(("event", ev.FIRST_AUDIO)) if ("event", ev.FIRST_AUDIO) in after else len(after)
    assert all(entry[1] == 0 for entry in after[:quiet_until] if entry[0] == "audio")
    assert any(entry[0] == "audio" and entry[1] > 1000 for entry in log[:flush])  # it was speaking before


async def open_conversation(server, **connect_options):
    from websockets.asyncio.client import connect

    from websockets.exceptions import ConnectionClosed

    socket = await connect(server.ws_url, **connect_options)
    try:
        await socket.send(wire.hello_message(RATE))
    except ConnectionClosed:
        pass  # refused before the hello (server full): the test reads why
    return socket


async def close_code_after(socket, *messages) -> tuple[int, list[dict]]:
    texts = []
    try:
        for message in messages:
            await socket.send(message)
        async for message in socket:
            if isinstance(message, str):
                texts.append(json.loads(message))
    except Exception:  # noqa: BLE001 - the close code is what the test reads
        pass
    return socket.close_code, texts


def test_refusals_come_with_their_codes(server):
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    wait_until_free(server)
    auth = {"additional_headers": {"Authorization": f"Bearer {server.token}"}}

    async def refusals() -> dict:
        codes = {}
        for name, options in (("token", {"additional_headers": {"Authorization": "Bearer wrong"}}),
                              ("origin", {**auth, "origin": "http://elsewhere.example"})):
            try:
                await connect(server.ws_url, **options)
            except InvalidStatus as exc:
                codes[name] = exc.response.status_code
        held = [await open_conversation(server, **auth) for _ in range(2)]
        for socket in held:
            assert json.loads(await socket.recv())["type"] == "ready"
        full = await open_conversation(server, **auth)
        codes["full"] = await close_code_after(full)
        for socket in held:
            await socket.close()
        while server.conversations.active:  # the server ends them a moment later
            await asyncio.sleep(0.1)
        for name, messages in (("not json", ["{nope"]), ("audio first", [b"\x00" * 640]),
                               ("rate", ['{"type": "hello", "rate": 4000}'])):
            socket = await connect(server.ws_url, **auth)
            codes[name] = (await close_code_after(socket, *messages))[0]
        for name, frame in (("odd bytes", b"\x00" * 641), ("too long", b"\x00" * 2 * RATE)):
            socket = await open_conversation(server, **auth)
            assert json.loads(await socket.recv())["type"] == "ready"
            codes[name] = (await close_code_after(socket, frame))[0]
        return codes

    codes = asyncio.run(refusals())
    assert codes.pop("token") == 401 and codes.pop("origin") == 403
    full_code, full_messages = codes.pop("full")
    assert full_code == wire.TRY_AGAIN and full_messages[0]["message"] == "server full: 2 of 2 conversations"
    assert codes == dict.fromkeys(codes, wire.UNSUPPORTED), codes
    allowed = asyncio.run(_page_origin_is_allowed(server, auth))
    assert allowed == "ready"


async def _page_origin_is_allowed(server, auth) -> str:
    socket = await open_conversation(server, origin=f"http://127.0.0.1:{server.port}", **auth)
    kind = json.loads(await socket.recv())["type"]
    await socket.close()
    return kind


def test_a_client_that_stops_reading_is_dropped_and_memory_stays_bounded(server):
    from websockets.asyncio.client import connect

    wait_until_free(server)

    async def flood() -> int:
        # 200 ms frames at 8 kHz in, 48 kHz PCM out: each frame sent brings 19,200 bytes back, never
        # read. A small receive buffer, so the kernel does not absorb tens of megabytes first.
        raw = socket_module.socket()
        raw.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, 32768)
        raw.connect(("127.0.0.1", server.port))
        socket = await connect(server.ws_url, sock=raw,
                               additional_headers={"Authorization": f"Bearer {server.token}"})
        await socket.send(wire.hello_message(8000, 48000))
        assert json.loads(await socket.recv())["type"] == "ready"
        frame = wire.float_to_pcm16(np.zeros(1600, np.float32))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not dropped(server):
            await socket.send(frame)
            await asyncio.sleep(0.005)
        code, _ = await close_code_after(socket)
        return code

    client_code = asyncio.run(flood())
    ended = server.conversations.finished[-1]
    assert ended["code"] == wire.SLOW_CONSUMER, ended
    assert ended["peak_queue"] <= SEND_QUEUE  # the bound held: the server never kept more
    assert client_code in (wire.SLOW_CONSUMER, 1006)  # told, or cut off if even the close could not get through
    wait_until_free(server)


def dropped(server) -> bool:
    finished = server.conversations.finished
    return bool(finished) and finished[-1]["code"] == wire.SLOW_CONSUMER


def test_the_client_reconnects_when_the_server_drops_the_connection(server):
    wait_until_free(server)
    client, io = client_on(server, recording("What is the capital of France?", lead_s=6.0))
    connected = threading.Event()
    client.on(CONNECTION, lambda e: connected.set() if e.data["state"] == "connected" else None)
    client.start(io)
    assert connected.wait(30)
    server.run_in_loop(server.conversations.close_all(wire.GOING_AWAY, "restarting"))
    assert client.wait(180)
    changes = client.events.history(CONNECTION)
    assert [e.data["state"] for e in changes] == ["connected", "server_error", "lost", "reconnecting", "connected"]
    assert changes[1].data["message"] == "restarting" and changes[2].data["code"] == wire.GOING_AWAY
    assert len(set(client.session_ids)) == 2 and client.summary()["reconnects"] == 1
    assert "france" in said(client, ev.TRANSCRIPT)[-1].lower(), [(e.kind, e.data) for e in client.events.history()]
    assert "Paris" in " ".join(said(client, ev.REPLY_TEXT))


@pytest.fixture(scope="module")
def batching_server(cascade_package):
    # A window long enough that two real-time streams meet in it even on a loaded 2-core machine.
    with Server(cascade_package.directory, port=0, max_sessions=2, batch_window_ms=20,
                options=SessionOptions(echo_cancellation=False)).start() as server:
        yield server


def test_two_conversations_over_batched_engines_get_their_own_answers_from_shared_calls(batching_server):
    """With cross-session batching on, each conversation still hears its own answer, and steps of
    the two conversations actually shared engine calls (docs/batching.md's guarantees, end to end)."""
    server, engines = batching_server, batching_server.conversations.engines
    assert {r.component.name for r in engines.batched} >= {"vad", "asr_decoder", "llm"}
    llm = server.conversations.agent.pipeline.llm
    assert llm.tail == 0  # undrafted: one-token steps that batch
    assert llm.growth is not None  # caches grow here too; steps batch with caches of equal capacity
    japan, japan_io = client_on(server, recording("What is the capital of Japan?"))
    france, france_io = client_on(server, recording("What is the capital of France?"))
    japan.start(japan_io)
    france.start(france_io)
    assert japan.wait(180) and france.wait(180)
    assert "japan" in said(japan, ev.TRANSCRIPT)[-1].lower() and "Tokyo" in " ".join(said(japan, ev.REPLY_TEXT))
    assert "france" in said(france, ev.TRANSCRIPT)[-1].lower() and "Paris" in " ".join(said(france, ev.REPLY_TEXT))
    assert "paris" not in everything(japan) and "tokyo" not in everything(france)
    vad = server.conversations.agent.pipeline.vad.runner
    assert vad.batcher.stats.shared_calls > 0  # both listened at once: their VAD chunks shared calls
    assert engines.shared_calls >= vad.batcher.stats.shared_calls
    wait_until_free(server)
    assert engines.members.count == 0  # each conversation left the batchers' members when it ended
