"""Freeze-Omni packages are served like the cascade: the `tiny` package's sessions over the socket."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from conftest import espeak

from edgevoice.serve import protocol as wire
from edgevoice.serve.server import Server

RATE = 16000


@pytest.fixture(scope="module")
def server(tiny_package, tmp_path_factory):
    web = tmp_path_factory.mktemp("web")
    (web / "index.html").write_text("<h1>kiosk</h1>")
    (web / "kiosk.js").write_text("export {};")
    (web / "secret.txt").symlink_to(tiny_package.directory / "manifest.json")  # a link out of the folder
    with Server(tiny_package.directory, port=0, max_sessions=2, insecure_no_token=True, web_dir=web).start() as server:
        yield server


def get(server, path: str) -> tuple[int, str, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], ""


def test_the_page_folder_is_served_and_nothing_else(server):
    assert get(server, "/") == (200, "text/html; charset=utf-8", "<h1>kiosk</h1>")
    assert get(server, "/kiosk.js?v=1")[:2] == (200, "text/javascript")
    for path in ("/missing.css", "/secret.txt", "/../pyproject.toml", "/%2e%2e/pyproject.toml", "/.hidden", "/a/b"):
        assert get(server, path)[0] == 404, path
    assert get(server, "/ws")[0] == 426  # the socket path wants an upgrade (no token needed on this server)


async def converse(server, audio: np.ndarray, output_rate: int) -> tuple[dict, int, list[dict], int]:
    """Stream ``audio`` in 20 ms frames (as fast as the server takes them); the ready message, the
    agent samples received, the events, and the close code."""
    from websockets.asyncio.client import connect

    async with connect(server.ws_url) as socket:
        await socket.send(wire.hello_message(RATE, output_rate))
        ready = json.loads(await socket.recv())
        received, events = 0, []

        async def read() -> None:
            nonlocal received
            async for message in socket:
                if isinstance(message, bytes):
                    received += len(message) // 2
                elif json.loads(message)["type"] == "event":
                    events.append(json.loads(message)["event"])

        reader = asyncio.create_task(read())
        for start in range(0, len(audio) - 320 + 1, 320):
            await socket.send(wire.float_to_pcm16(audio[start:start + 320]))
            await asyncio.sleep(0.02)
        await socket.send(wire.BYE_MESSAGE)
        await asyncio.wait_for(reader, 30)
    return ready, received, events, socket.close_code


def test_two_tiny_conversations_run_side_by_side_in_lockstep(server):
    audio = np.concatenate([np.zeros(4800, np.float32), espeak("Hello there."), np.zeros(9600, np.float32)])
    audio = audio[: len(audio) // 320 * 320]

    async def both():
        return await asyncio.gather(converse(server, audio, 24000), converse(server, audio, 8000))

    for (ready, received, events, code), rate in zip(asyncio.run(both()), (24000, 8000)):
        assert ready["recipe"] == "tiny" and ready["output_rate"] == rate and code == wire.NORMAL
        assert received == len(audio) * rate // RATE  # one frame of the same duration per mic frame
        assert any(e["kind"] == "turn_state" for e in events)  # the turn-state head listened
        assert events[-1]["kind"] == "session_end" and events[-1]["data"]["reason"] == "bye"


def test_freeze_omni_conversations_share_engine_calls_with_batching_on(tiny_package):
    """Batching on a Freeze-Omni package: the pipeline's ``wrap_shared_runners`` hook wraps its
    streaming graphs, two conversations side by side still run in lockstep to a normal end, and
    their steps shared calls."""
    audio = np.concatenate([np.zeros(4800, np.float32), espeak("Hello there."), np.zeros(9600, np.float32)])
    audio = audio[: len(audio) // 320 * 320]
    with Server(tiny_package.directory, port=0, max_sessions=2, insecure_no_token=True,
                batch_window_ms=20).start() as server:
        engines = server.conversations.engines
        assert {"vad", "fo_encoder", "fo_llm_listen"} <= {r.component.name for r in engines.batched}

        async def both():
            return await asyncio.gather(converse(server, audio, 24000), converse(server, audio, 24000))

        for _ready, received, events, code in asyncio.run(both()):
            assert code == wire.NORMAL and received == len(audio) * 24000 // RATE
            assert events[-1]["kind"] == "session_end"
        assert engines.shared_calls > 0
    assert all(r.batcher.closed for r in engines.batched if r.batcher is not None)  # stopping closed them
