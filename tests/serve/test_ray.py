"""`edgevoice serve` replicas on Ray Serve (edgevoice/serve/ray_app.py), on a local Ray cluster.

The cluster is this machine only (2 CPUs, no dashboard, the Serve proxy on 127.0.0.1). Two
replicas each load the cascade package and hold one conversation; two conversations asking
different questions must land on different replicas and each hear its own answer, and a third one
beyond the capacity (2 replicas x 1) must be refused with close code 1013 ("server full"), as the
wire protocol (docs/serve.md, edgevoice/serve/protocol.py) says.

In CI (``CI`` set) a missing Ray fails these tests (`.ci/run` installs ``edgevoice[ray]``);
elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import espeak

pytestmark = pytest.mark.ray

TOKEN = "ray-test-token"
QUESTIONS = {"france": "What is the capital of France?", "kitchen": "Please turn on the kitchen lights."}
FRAME = 1600  # 100 ms of 16 kHz mic audio per binary frame
ANSWER_SECONDS = 60  # end of a question -> its reply text and first audio, on 2 busy cores


def _require_ray():
    try:
        import ray  # noqa: F401
        import websockets  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        reason = f"Ray Serve is not installed ({exc}): pip install -e '.[ray]'"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the Ray tests: .ci/run installs the extra)", pytrace=False)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- settings, without a cluster ----------------------------------------------------------------

def test_options_refuse_unsafe_or_impossible_settings():
    _require_ray()
    from edgevoice.errors import EdgevoiceError
    from edgevoice.serve.ray_app import RayServeOptions

    RayServeOptions(package="p", token="t", host="0.0.0.0").validate()
    RayServeOptions(package="p", insecure_no_token=True, host="127.0.0.1").validate()
    for bad in (
        RayServeOptions(package="p"),  # no token at all
        RayServeOptions(package="p", insecure_no_token=True, host="0.0.0.0"),  # no token off loopback
        RayServeOptions(package="p", token=""),  # an empty token protects nothing
        RayServeOptions(package="p", token="t", insecure_no_token=True),  # contradictory
        RayServeOptions(package="p", token="t", max_sessions_per_replica=0),
        RayServeOptions(package="p", token="t", replicas=3, max_replicas=2),
        RayServeOptions(package="p", token="t", cores_per_replica=0),
    ):
        with pytest.raises(EdgevoiceError):
            bad.validate()


def test_deployment_keeps_a_refusal_slot_and_autoscales_only_with_room_to_grow():
    _require_ray()
    from edgevoice.serve.ray_app import ROUTER_CLASS, RayServeOptions, deployment_options

    fixed = deployment_options(RayServeOptions(package="p", token="t", replicas=2, max_sessions_per_replica=3,
                                               cores_per_replica=2, gpus_per_replica=1))
    assert fixed["max_ongoing_requests"] == 4  # three conversations + the one that hears 1013
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    assert fixed["request_router_config"].request_router_class == ROUTER_CLASS

    scaling = deployment_options(RayServeOptions(package="p", token="t", replicas=1, max_replicas=4,
                                                 max_sessions_per_replica=4))
    assert "num_replicas" not in scaling
    assert scaling["autoscaling_config"] == {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 4,
                                             "target_ongoing_requests": 3.0}


def test_token_comes_from_query_or_bearer_header_and_web_files_stay_in_their_folder():
    """The replicas check tokens and serve the page's files by edgevoice/serve/server.py's own
    ``presented_token`` and ``web_file`` (tests/serve/test_protocol.py tests their rules)."""
    _require_ray()
    from edgevoice.serve import ray_app, server

    assert ray_app.presented_token is server.presented_token and ray_app.web_file is server.web_file
    assert ray_app.presented_token("token=q", "Bearer h") == "h"
    assert ray_app.web_file(ray_app.WEB_DIR, "worklet.js") == ray_app.WEB_DIR / "worklet.js"


@pytest.mark.parametrize("args, needle", [
    (("--host", "0.0.0.0", "--insecure-no-token"), "only allowed on loopback"),
    (("--token", "t", "--detach"), "--detach needs --address"),
])
def test_cli_refuses_unsafe_settings_in_one_line_before_starting_ray(tmp_path, args, needle):
    _require_ray()
    command = [sys.executable, "-m", "edgevoice.cli.main", "serve-ray", "--package", str(tmp_path), *args]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "deploying" not in result.stdout


# --- a local Ray cluster ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_serve(cascade_package):
    """Two cascade replicas, one conversation each, behind the Serve proxy on a free loopback port."""
    _require_ray()
    import ray
    from ray import serve

    from edgevoice.serve import ray_app

    port = _free_port()
    options = ray_app.RayServeOptions(package=str(cascade_package.directory), replicas=2, max_sessions_per_replica=1,
                                      cores_per_replica=1, host="127.0.0.1", port=port, token=TOKEN, drain_timeout_s=5)
    # The proxy reads its middlewares from its environment, which Ray's processes inherit from here
    # (what ray_app.start does for a Ray it starts itself).
    previous = os.environ.get(ray_app.PROXY_CALLBACK_ENV)
    os.environ[ray_app.PROXY_CALLBACK_ENV] = ray_app.PROXY_CALLBACK
    # address="local": a new cluster of this test's own, even where RAY_ADDRESS names another.
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        ray_app.start(options)
        yield f"127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        if previous is None:
            os.environ.pop(ray_app.PROXY_CALLBACK_ENV, None)
        else:
            os.environ[ray_app.PROXY_CALLBACK_ENV] = previous


def _replica_actor_tags() -> set[str]:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {name.rsplit("#", 1)[-1] for name in names if "ConversationReplica" in name}


async def _open(address: str, hello: bool = True):
    import websockets

    socket_ = await websockets.connect(f"ws://{address}/ws?token={TOKEN}", max_size=None)
    if hello:
        await socket_.send(json.dumps({"type": "hello", "rate": 16000, "format": "pcm16"}))
    return socket_


async def _ask(socket_, question: np.ndarray) -> dict:
    """Stream the question then silence at real time until the reply is heard; what came back."""
    silence = np.zeros(16000 + (-len(question)) % FRAME, np.float32)  # 1 s or more: whole frames only
    pcm = (np.clip(np.concatenate([question, silence]), -1, 1) * 32767).astype("<i2")
    got = {"events": [], "audio_frames": 0, "audio_samples": 0, "loud_frames": 0, "sent": 0}
    deadline = time.monotonic() + len(pcm) / 16000 + ANSWER_SECONDS

    async def receive():  # until the server closes (1000 after bye ends the loop quietly)
        async for message in socket_:
            if isinstance(message, bytes):
                samples = np.frombuffer(message, "<i2")
                got["audio_frames"] += 1
                got["audio_samples"] += len(samples)
                got["loud_frames"] += int(np.abs(samples).max(initial=0) > 300)
            else:
                body = json.loads(message)
                if body["type"] == "event":
                    got["events"].append(body["event"])

    receiver = asyncio.create_task(receive())
    position = 0
    while time.monotonic() < deadline and not _answered(got):
        frame = pcm[position:position + FRAME] if position < len(pcm) else np.zeros(FRAME, "<i2")
        await socket_.send(frame.tobytes())
        got["sent"] += 1
        position += FRAME
        await asyncio.sleep(FRAME / 16000)
    await asyncio.sleep(0.5)  # the frames answering the last ones sent
    await socket_.send(json.dumps({"type": "bye"}))
    await asyncio.wait_for(receiver, 20)
    got["close"] = (socket_.close_code, socket_.close_reason)
    return got


async def _until_closed(socket_) -> list:
    import websockets

    messages = []
    try:
        while True:
            messages.append(await socket_.recv())
    except websockets.ConnectionClosed:
        return messages


def _answered(got: dict) -> bool:
    kinds = {e["kind"] for e in got["events"]}
    # The reply's audio comes back in the frames that answer later mic frames: keep sending until
    # half a second of it has been heard.
    return {"transcript", "reply_text", "first_audio"} <= kinds and got["loud_frames"] >= 5


def _texts(got: dict, kind: str) -> str:
    return " ".join(str(e["data"].get("text", "")) for e in got["events"] if e["kind"] == kind).lower()


def test_two_conversations_spread_over_two_replicas_and_a_third_is_refused(ray_serve):
    questions = {key: espeak(text) for key, text in QUESTIONS.items()}

    async def scenario():
        first, second = await _open(ray_serve), await _open(ray_serve)
        ready = [json.loads(await s.recv()) for s in (first, second)]
        # Both replicas now hold their one conversation: the third must hear "server full".
        third = await _open(ray_serve, hello=False)  # refused at once, before any hello is read
        # Without a refusal the connection would wait in Ray's queue: a timeout here is a failure.
        refusal = await asyncio.wait_for(_until_closed(third), 30)
        answers = await asyncio.gather(_ask(first, questions["france"]), _ask(second, questions["kitchen"]))
        return ready, refusal, (third.close_code, third.close_reason), answers

    ready, refusal, third_close, answers = asyncio.run(scenario())

    assert [r["type"] for r in ready] == ["ready", "ready"]
    assert all(r["max_sessions"] == 1 and r["recipe"] == "cascade" for r in ready)
    tags = [r["session"].split("/", 1)[0] for r in ready]
    assert tags[0] != tags[1], f"both conversations went to replica {tags[0]}"
    assert set(tags) <= _replica_actor_tags(), (tags, _replica_actor_tags())

    assert third_close == (1013, "server full: 1 of 1 conversations")
    assert [json.loads(m)["type"] for m in refusal] == ["error"]

    for (key, text), got, other in zip(QUESTIONS.items(), answers, reversed(list(QUESTIONS))):
        heard = _texts(got, "transcript")
        assert key in heard and other not in heard, (text, heard)
        assert _texts(got, "reply_text").strip(), f"no reply to {text!r}: {got['events']}"
        assert got["loud_frames"] > 0, f"the reply to {text!r} was silent"
        # The duplex lockstep: one speaker frame back per mic frame, of the same duration (16 -> 22.05 kHz).
        assert got["audio_frames"] == got["sent"]
        assert got["audio_samples"] == got["sent"] * FRAME * 22050 // 16000
        assert got["close"][0] == 1000, got["close"]

    async def after():  # both conversations ended: their replicas take new ones again
        socket_ = await _open(ray_serve)
        message = json.loads(await socket_.recv())
        await socket_.send(json.dumps({"type": "bye"}))
        await socket_.wait_closed()
        return message, socket_.close_code

    message, code = asyncio.run(after())
    assert message["type"] == "ready" and code == 1000


def test_token_and_origin_are_checked_before_the_upgrade(ray_serve):
    import websockets

    async def status(url: str, **connect) -> int:
        try:
            socket_ = await websockets.connect(url, **connect)
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        await socket_.close()
        return 101

    async def statuses():
        return (await status(f"ws://{ray_serve}/ws"),
                await status(f"ws://{ray_serve}/ws?token=wrong"),
                await status(f"ws://{ray_serve}/ws", additional_headers={"Authorization": f"Bearer {TOKEN}"}),
                await status(f"ws://{ray_serve}/ws?token={TOKEN}", origin="http://elsewhere.example"),
                await status(f"ws://{ray_serve}/ws?token={TOKEN}", origin=f"http://{ray_serve}"))

    assert asyncio.run(statuses()) == (401, 401, 101, 403, 101)


def test_page_files_are_served_through_ray(ray_serve):
    from edgevoice.serve.ray_app import WEB_DIR

    def get(path: str) -> tuple[int, bytes, str]:
        try:
            with urllib.request.urlopen(f"http://{ray_serve}{path}", timeout=30) as response:
                return response.status, response.read(), response.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, b"", ""

    status, body, content_type = get("/worklet.js")
    assert (status, body) == (200, (WEB_DIR / "worklet.js").read_bytes())
    assert "javascript" in content_type
    assert get("/missing.js")[0] == 404
    assert get("/%2e%2e/ray_app.py")[0] == 404
    index = WEB_DIR / "index.html"
    assert get("/")[:2] == ((200, index.read_bytes()) if index.is_file() else (404, b""))

    health = json.loads(get("/healthz")[1])
    assert health["max_sessions"] == 1 and health["replica"] in _replica_actor_tags()


# --- a client that stops reading --------------------------------------------------------------

def test_the_proxy_guard_holds_at_most_its_bound_then_tells_the_replica_4000():
    """SlowReaderGuard without a cluster: a socket that never takes a message (a client that
    stopped reading) gets at most ``send_queue`` messages queued; then the app's next receive is a
    disconnect with 4000 and the client is sent close 4000 (edgevoice/serve/conversation.py's
    ``Conversation._put`` is the same rule for `edgevoice serve`)."""
    _require_ray()
    from edgevoice.serve import protocol as wire
    from edgevoice.serve.ray_app import SlowReaderGuard

    async def scenario():
        sent, blocked = [], asyncio.Event()

        async def stuck_send(message):  # the socket: the first frame never finishes going out
            sent.append(message)
            if message["type"] == "websocket.send":
                await blocked.wait()

        async def client_receive():
            await asyncio.sleep(3600)  # the client still has something to say: it never disconnects

        async def app(scope, receive, send):
            await send({"type": "websocket.accept"})
            for _ in range(50):
                await send({"type": "websocket.send", "bytes": bytes(100)})
                await asyncio.sleep(0)  # as Ray's proxy, which awaits the replica between messages
            return await receive()

        heard = {}

        async def recording_app(scope, receive, send):
            heard["message"] = await app(scope, receive, send)

        guard = SlowReaderGuard(recording_app, send_queue=8)
        await asyncio.wait_for(guard({"type": "websocket", "path": "/ws"}, client_receive, stuck_send), 10)
        return heard["message"], sent

    disconnect, sent = asyncio.run(scenario())
    assert disconnect["type"] == "websocket.disconnect" and disconnect["code"] == wire.SLOW_CONSUMER
    frames = [m for m in sent if m["type"] == "websocket.send"]
    assert len(frames) == 1  # the one the socket never took; the other 49 were dropped, not kept
    assert sent[-1] == {"type": "websocket.close", "code": wire.SLOW_CONSUMER, "reason": "8 messages queued in the proxy"}


def test_a_client_that_stops_reading_is_dropped_with_4000_and_nothing_piles_up(ray_serve):
    """The rule of `edgevoice serve` (tests/serve/test_serve.py,
    test_a_client_that_stops_reading_is_dropped_and_memory_stays_bounded) through Ray's proxy:
    200 ms frames at 8 kHz in, 48 kHz out (19,200 bytes back per frame), nothing read; afterwards
    the client gets what the server side still held for it, then close 4000. Without the bound
    (measured with the tiny package and one replica) all 28.8 MB were kept and came through, and
    the conversation ended only at the idle timeout with 1000."""
    import websockets
    from websockets.asyncio.client import connect

    from edgevoice.serve import protocol as wire

    host, port = ray_serve.split(":")
    frames_sent = 1500
    reply_bytes = 1600 * 48000 // 8000 * 2  # per frame sent: 200 ms of 48 kHz PCM16

    async def flood():
        raw = socket.socket()  # a small receive buffer: the kernel does not absorb megabytes first
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        raw.connect((host, int(port)))
        # No compression: zeros would deflate to a few bytes, and nothing would ever back up.
        socket_ = await connect(f"ws://{ray_serve}/ws?token={TOKEN}", sock=raw, compression=None)
        await socket_.send(wire.hello_message(8000, 48000))
        assert json.loads(await socket_.recv())["type"] == "ready"
        frame = wire.float_to_pcm16(np.zeros(1600, np.float32))
        for _ in range(frames_sent):
            await asyncio.wait_for(socket_.send(frame), 30)
            await asyncio.sleep(0.005)
        held = 0
        try:
            while True:  # now read: what was kept for us, then the close
                message = await asyncio.wait_for(socket_.recv(), 60)
                held += len(message) if isinstance(message, bytes) else 0
        except websockets.ConnectionClosed:
            pass
        return held, socket_.close_code, socket_.close_reason

    held, code, reason = asyncio.run(flood())
    asked = frames_sent * reply_bytes  # 28.8 MB
    assert (code, reason) == (wire.SLOW_CONSUMER, "256 messages queued in the proxy")
    # 256 queued frames (4.9 MB) plus socket buffers; everything else was dropped, not kept.
    assert held < asked / 3, f"{held / 1e6:.1f} MB of {asked / 1e6:.1f} MB were kept for a client that did not read"
    deadline = time.monotonic() + 30  # the replica ended the conversation: both take new ones again
    while time.monotonic() < deadline and _replicas_active(ray_serve) != [0, 0]:
        time.sleep(0.5)
    assert _replicas_active(ray_serve) == [0, 0]


def _replicas_active(address: str) -> list[int]:
    """Conversations each replica holds (by /healthz; the proxy picks a replica per request, so ask
    until both have answered)."""
    seen = {}
    for _ in range(40):
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=10) as response:
            health = json.loads(response.read())
        seen[health["replica"]] = health["active"]
        if len(seen) == 2:
            break
    return sorted(seen.values())
