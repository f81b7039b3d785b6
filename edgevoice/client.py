"""``Client``: a robot's side of `edgevoice serve` — its microphone to the server, the answers to its speaker.

    from edgevoice.client import Client

    client = Client("ws://kiosk-server:8765", token="...")
    client.on("reply_text", lambda event: print(event.data["text"]))
    client.run(agent_io)        # any AudioIO: a sound card, an AppAudioIO, a FileIO with pace=1.0

The events API is ``Agent``'s (``on``, ``write_events``, ``start`` / ``wait`` / ``stop`` / ``run``);
the events are the server's, as ``talk --events`` writes them, plus ``connection`` events of the
client's own (``data["state"]``: connected, lost, reconnecting, gave_up). A mic frame goes out
every ``frame_ms``: a live microphone keeps at most 1 s of them waiting to be sent (the oldest
give way, counted in ``frames_dropped``), a ``FileIO`` recording keeps them all. Each frame the
server sends back is written to the io's speaker at once, and a ``flush`` drops what is queued
there (a barge-in). When the connection drops (the server restarts, the network blinks) the
client reconnects with growing pauses, ``ReconnectPolicy.tries`` times at most; the new
connection is a new conversation (the server keeps nothing of the old one).

On a ``FileIO`` the conversation ends by itself once the recording is over and the agent has been
quiet for ``quiet_s`` with no reply or tool call under way: the client says ``bye`` and the server
answers with its ``session_end`` summary (``summary()``).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgevoice.audio.io import AudioIO, FileIO
from edgevoice.errors import EdgevoiceError
from edgevoice.runtime import events as ev
from edgevoice.runtime.conversation import BackgroundConversation
from edgevoice.runtime.events import Event, EventBus
from edgevoice.serve import protocol as wire

CONNECTION = "connection"  # the client's own event kind: data {"state", "attempt", "code", "reason"}
FATAL_CODES = (wire.UNSUPPORTED, wire.POLICY)  # trying again would be refused the same way
_FRAME_BACKLOG = 50  # mic frames waiting to go out (1 s at 20 ms); older ones give way
CLOSE_TIMEOUT_S = 2.0  # how long our own close (bye, stop) waits for the server's answer


@dataclass(frozen=True)
class ReconnectPolicy:
    """How hard the client tries after a lost connection: pauses of first_delay_s, doubling up to max_delay_s."""

    tries: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1))


class _Activity:
    """Whether the agent still has something to say: what ends a recorded conversation."""

    def __init__(self):
        self.last_event = self.last_sound = time.monotonic()
        self.replying = False
        self.tools_pending = 0

    def event(self, event: Event) -> None:
        self.last_event = time.monotonic()
        kind, data = event.kind, event.data
        if kind == ev.USER_SPEECH_START:
            self.replying = True  # the user holds the floor: their turn is still to be answered
        elif kind in (ev.TURN_TAKEN, ev.TOOL_RESULT, ev.TOOL_ERROR):
            self.replying = True  # an answer (or a tool's follow-up) is coming
        elif kind in (ev.AGENT_DONE, ev.CANCEL_DONE, ev.DISMISSED):
            self.replying = False
        elif kind in (ev.TRANSCRIPT, ev.REPLY_TEXT) and not data.get("text") and not data.get("speculative"):
            self.replying = False  # nothing heard, or nothing to say: no audio follows
        if kind == ev.TOOL_CALL:
            self.tools_pending += 1
        elif kind in (ev.TOOL_RESULT, ev.TOOL_ERROR):
            self.tools_pending = max(0, self.tools_pending - 1)

    def sound(self, pcm: bytes) -> None:
        if any(pcm):
            self.last_sound = time.monotonic()

    def idle(self, quiet_s: float) -> bool:
        now = time.monotonic()
        return (not self.replying and self.tools_pending == 0 and now - self.last_event >= quiet_s
                and now - self.last_sound >= quiet_s)


class Client(BackgroundConversation):
    """Streams an ``AudioIO`` to an `edgevoice serve` conversation; the same events API as ``Agent``."""

    def __init__(self, url: str, token: str | None = None, *, reconnect: ReconnectPolicy = ReconnectPolicy(),
                 frame_ms: int = 20, quiet_s: float = 2.0, tail_limit_s: float = 60.0):
        if not url.startswith(("ws://", "wss://")):
            raise EdgevoiceError(f"the server URL starts with ws:// or wss://, got {url!r} (e.g. ws://127.0.0.1:8765)")
        self.url = url if url.rstrip("/").endswith("/ws") else url.rstrip("/") + "/ws"
        self.token, self.reconnect, self.frame_ms = token, reconnect, frame_ms
        self.quiet_s, self.tail_limit_s = quiet_s, tail_limit_s
        self.events = EventBus()  # the server's events and ours; .history() as a session's
        super().__init__(self.events)
        self.io: AudioIO | None = None
        self.session_ids: list[str] = []  # one per connection that got "ready"
        self.server_summary: dict[str, Any] = {}
        self.counts = {"frames_sent": 0, "frames_dropped": 0, "frames_received": 0, "flushes": 0, "reconnects": 0}

    # --- the Agent-like API (on, write_events, wait and the context manager: BackgroundConversation) ---

    def start(self, io: AudioIO, seconds: float | None = None) -> Client:
        """Connect and stream ``io`` in the background; returns self (a context manager)."""
        if isinstance(io, FileIO) and io.pace is None:
            raise EdgevoiceError("a server listens in real time: open the FileIO with pace=1.0")
        if self.running:
            raise EdgevoiceError("this client is already streaming; stop() it first")
        self.io = io
        self._start_thread(self._main, (io, seconds), "edgevoice-client")
        return self

    def stop(self) -> None:
        """Say bye and close; the io is stopped."""
        self._join(timeout=15.0)

    def run(self, io: AudioIO, seconds: float | None = None) -> Client:
        """Blocking: stream ``io`` until the recording is answered, ``seconds`` pass, or stop()."""
        self._run_to_end(io, seconds)
        return self

    def summary(self) -> dict[str, Any]:
        """The server's summary of the last conversation (its ``session_end``) and the client's counts."""
        return {**self.server_summary, **self.counts}

    # --- inside ---------------------------------------------------------------------------------

    def _main(self, io: AudioIO, seconds: float | None) -> None:
        try:
            asyncio.run(_stream(self, io, seconds))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
            self.error = exc
        finally:
            io.stop()
            self._finished.set()

    def _emit_connection(self, state: str, **data: Any) -> None:
        now = self.io.clock.now() if self.io is not None else 0.0
        self.events.emit(Event(now, CONNECTION, 0, {"state": state, **data}))


@functools.cache
def _closing_connection_class():
    """A websockets client connection that ends as soon as the server's close frame has arrived.

    The protocol lets the server drop TCP first, and the library waits ``close_timeout`` for it:
    a front (load balancer, proxy) that holds its side open a while made every server close reach
    ``lost`` and the reconnect CLOSE_TIMEOUT_S late. Once both close frames have crossed, the
    conversation is over (RFC 6455 7.1.1 lets the client close then), so the client closes TCP itself.
    """
    from websockets.asyncio.client import ClientConnection
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State

    class ClosingClientConnection(ClientConnection):
        def process_event(self, event) -> None:
            super().process_event(event)  # the handshake's response comes here too, before any frame
            closing = isinstance(event, Frame) and event.opcode is Opcode.CLOSE and self.protocol.state is State.CLOSING
            if closing and self.transport is not None:
                self.transport.close()  # our answering close frame is already queued: it goes out first

    return ClosingClientConnection


async def _stream(client: Client, io: AudioIO, seconds: float | None) -> None:
    await _Link(client, io, seconds).run()  # built inside the loop: its queues belong to it


class _Link:
    """One streaming run: the mic pump thread, the connection (and its successors), the end."""

    def __init__(self, client: Client, io: AudioIO, seconds: float | None):
        self.client, self.io = client, io
        self.frame = max(1, io.mic_rate * client.frame_ms // 1000)  # samples per mic frame
        self.end_at = None if seconds is None else io.clock.now() + seconds
        self.activity = _Activity()
        self.loop = asyncio.get_running_loop()
        # A live microphone's backlog is bounded (old frames give way: the user hears the agent react
        # to what they say now); a recording loses nothing. A stalled mic thread catches up in a
        # burst that is queued before the sender runs once, so a stall of ~1 s overflows the bound
        # and would cut words out of a recording.
        self.frames: asyncio.Queue[bytes] = asyncio.Queue(0 if isinstance(io, FileIO) else _FRAME_BACKLOG)
        self.connected = False
        self.first_connect = threading.Event()  # the io starts then: a recording loses nothing to the handshake
        self.want_bye = asyncio.Event()
        self.tail_started: float | None = None

    async def run(self) -> None:
        pump = threading.Thread(target=self._pump, name="edgevoice-client-mic", daemon=True)
        pump.start()
        try:
            await self._converse()
        finally:
            self.client._stopping.set()  # the pump ends too
            await asyncio.to_thread(pump.join, 5.0)

    async def _converse(self) -> None:
        client, attempt = self.client, 0
        while True:
            code, reason = await self._connection()
            if self.want_bye.is_set() or code == wire.NORMAL:
                return
            client._emit_connection("lost", code=code, reason=reason)
            if code in FATAL_CODES:
                raise EdgevoiceError(f"the server refused the conversation ({code}: {reason})")
            attempt += 1
            if attempt > client.reconnect.tries:
                client._emit_connection("gave_up", attempt=attempt - 1, code=code, reason=reason)
                raise EdgevoiceError(f"lost the connection to {client.url} ({code}: {reason}) and could not "
                                     f"reconnect in {client.reconnect.tries} tries; is the server running?")
            client.counts["reconnects"] += 1
            client._emit_connection("reconnecting", attempt=attempt, delay_s=client.reconnect.delay(attempt))
            await asyncio.sleep(client.reconnect.delay(attempt))
            if self.want_bye.is_set():
                return

    async def _connection(self) -> tuple[int | None, str]:
        """One connection, hello to close; (close code, reason); None: never connected."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        headers = {"Authorization": f"Bearer {self.client.token}"} if self.client.token else {}
        try:
            async with connect(self.client.url, additional_headers=headers, max_size=wire.MAX_TEXT_CHARS * 16,
                               open_timeout=10, close_timeout=CLOSE_TIMEOUT_S, compression=None,
                               create_connection=_closing_connection_class()) as socket:
                try:
                    await socket.send(wire.hello_message(self.io.mic_rate, self.io.speaker_rate))
                    while not self._ready(wire.parse_text(await asyncio.wait_for(socket.recv(), 30))):
                        pass  # an error message comes before a refusal's close
                except ConnectionClosed:
                    return socket.close_code, socket.close_reason or ""
                return await self._exchange(socket)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                what = "token" if status == 401 else "origin"
                raise EdgevoiceError(f"the server refused the {what} (HTTP {status}); check --token") from None
            return None, f"HTTP {status}"
        except (OSError, asyncio.TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            self.connected = False

    def _ready(self, message: dict) -> bool:
        if message.get("type") == "error":
            self.client._emit_connection("server_error", message=message.get("message"))
            return False
        if message.get("type") != "ready":
            raise EdgevoiceError(f"the server answered hello with {message}; is this an edgevoice server?")
        if message.get("output_rate") != self.io.speaker_rate:
            raise EdgevoiceError(f"the server sends {message.get('output_rate')} Hz audio, the speaker plays "
                                 f"{self.io.speaker_rate} Hz")
        self.client.session_ids.append(str(message.get("session")))
        self._drain_frames()  # audio from before this connection is stale
        self.connected = True
        self.first_connect.set()
        self.client._emit_connection("connected", session=message.get("session"))
        return True

    async def _exchange(self, socket) -> tuple[int | None, str]:
        sender = asyncio.create_task(self._send_frames(socket))
        try:
            async for message in socket:
                self._receive(message)
        except Exception:  # noqa: BLE001 - an abrupt end reads as a closed socket below
            pass
        finally:
            sender.cancel()
        return socket.close_code, socket.close_reason or ""

    async def _send_frames(self, socket) -> None:
        bye = asyncio.create_task(self.want_bye.wait())
        try:
            while True:
                get = asyncio.create_task(self.frames.get())
                await asyncio.wait((get, bye), return_when=asyncio.FIRST_COMPLETED)
                if bye.done():
                    get.cancel()
                    await socket.send(wire.BYE_MESSAGE)
                    return
                await socket.send(get.result())
                self.client.counts["frames_sent"] += 1
        except Exception:  # noqa: BLE001 - the receiver sees the closed socket and reports it
            return
        finally:
            bye.cancel()

    def _receive(self, message: bytes | str) -> None:
        if isinstance(message, bytes):
            self.client.counts["frames_received"] += 1
            self.activity.sound(message)
            self.io.speaker.write(np.frombuffer(message, dtype="<i2").astype(np.float32) / 32768.0)
            return
        body = wire.parse_text(message)
        if body["type"] == "flush":
            self.client.counts["flushes"] += 1
            self.io.flush_speaker()  # at once: queued agent audio must not play over the user
        elif body["type"] == "event":
            event = wire.event_from_message(body)
            self.activity.event(event)
            if event.kind == ev.SESSION_END:
                self.client.server_summary = dict(event.data)
            self.client.events.emit(event)
        elif body["type"] == "error":
            self.client._emit_connection("server_error", message=body.get("message"))

    # --- the microphone -------------------------------------------------------------------------

    def _pump(self) -> None:
        """Mic frames to the loop in real time (the io's pace); decides when a recording is done."""
        try:
            while not self.first_connect.wait(0.1):
                if self.client._stopping.is_set():
                    return
            self.io.start()
            self._stream()
        finally:
            self.loop.call_soon_threadsafe(self.want_bye.set)

    def _stream(self) -> None:
        io, buffer = self.io, np.zeros(self.frame, np.float32)
        while not self.client._stopping.is_set():
            if not io.wait_for_mic(self.frame, timeout=0.5, with_reference=False):
                continue
            io.mic.read_into(buffer)
            if isinstance(io, FileIO):
                io.reference.read_into(np.zeros(io.reference.readable, np.float32))  # nobody else reads it
            self.loop.call_soon_threadsafe(self._offer, wire.float_to_pcm16(buffer))
            if self._done():
                return

    def _done(self) -> bool:
        io = self.io
        if self.end_at is not None and io.clock.now() >= self.end_at:
            return True
        if not (isinstance(io, FileIO) and io.recording_finished):
            return False
        now = time.monotonic()
        self.tail_started = self.tail_started or now
        return (self.connected and self.activity.idle(self.client.quiet_s)) or now - self.tail_started > self.client.tail_limit_s

    def _offer(self, pcm: bytes) -> None:
        if not self.connected:
            return  # nobody to send it to: a robot cannot keep its mic for later
        if self.frames.full():
            self.frames.get_nowait()  # the oldest gives way: latency stays bounded
            self.client.counts["frames_dropped"] += 1
        self.frames.put_nowait(pcm)

    def _drain_frames(self) -> None:
        while not self.frames.empty():
            self.frames.get_nowait()
