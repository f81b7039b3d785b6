"""One conversation over a message transport, and the host that runs many from one load of the engines.

``ConversationHost`` (the name other front ends import; keep it stable) loads a package once and
runs each connection it is handed as a full duplex session, the same ``DuplexSession`` /
``FreezeOmniSession`` that ``talk`` and ``Agent`` run, over an ``AppAudioIO`` whose microphone is
written from the client's binary frames and whose speaker is read back one frame per mic frame:

    host = ConversationHost("engines/cpu", max_sessions=4, token="secret")
    await host.handle(transport, token_ok=host.token_ok(presented), origin_ok=host.origin_ok(origin, page_host))

``transport`` is anything with three coroutines (``Transport``): ``recv() -> bytes | str`` (raise
``TransportClosed``, or any exception, when the peer is gone), ``send(bytes | str)`` and
``close(code, reason)``. The websockets server (``edgevoice.serve.server``) wraps its connections so;
a Starlette / Ray Serve WebSocket wraps the same way. ``handle`` refuses a connection whose token or
origin failed (1008), or when ``active`` has reached ``max_sessions`` (1013), and returns when the
conversation is over. The wire protocol is ``edgevoice.serve.protocol`` (docs/serve.md).

Isolation: each conversation has its own pipeline view (history, LLM cache, voice noise stream:
``CascadePipeline.new_conversation``), its own session, event bus, tool runner and queues; only the
loaded engines are shared. Bounds: the outgoing queue holds ``Limits.send_queue`` messages (a
client that stops reading is dropped with 4000), incoming frames are checked one by one, and the
microphone ring of the I/O is a fixed few seconds.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence
from urllib.parse import urlsplit

from edgevoice.audio.app_io import AppAudioIO
from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError
from edgevoice.runtime import events as ev
from edgevoice.runtime.agent import Agent, open_session
from edgevoice.runtime.batching import BatchedRunner, BatchMembers, batched
from edgevoice.runtime.cascade.session import SessionOptions
from edgevoice.runtime.events import Event, EventBus
from edgevoice.runtime.tools import Tool
from edgevoice.serve import protocol as wire

_END = object()  # the sender's last item: everything queued before it has been sent


class TransportClosed(Exception):
    """The peer went away (what a transport's ``recv`` / ``send`` raise).

    ``code`` is the close code where the transport knows one; ``wire.SLOW_CONSUMER`` from a front
    that holds the outgoing queue itself (Ray Serve's proxy, ``ray_app.SlowReaderGuard``) ends the
    conversation as this module's own full queue does.
    """

    def __init__(self, message: str = "", code: int | None = None):
        super().__init__(message)
        self.code = code


class Transport(Protocol):
    async def recv(self) -> bytes | str: ...

    async def send(self, message: bytes | str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True)
class Limits:
    """What one conversation may hold or wait for."""

    send_queue: int = 256  # messages (audio frames and events) waiting for a slow socket: ~5 s of 20 ms frames
    hello_timeout_s: float = 10.0  # the first message must arrive within this
    idle_timeout_s: float = 30.0  # no message from the client for this long ends the conversation
    drain_timeout_s: float = 5.0  # at the end, how long queued messages may take to go out


# Off: on the 2-core CPU, 1-3 cascade conversations with a 2 ms window were faster in one run and
# slower in the next (BENCHMARKS.md, "`edgevoice serve` with cross-session batching"): no reliable
# gain to turn on for everyone. Where the engine call dominates (a GPU), measure and pass a window.
DEFAULT_BATCH_WINDOW_MS: float | None = None
BATCH_MAX_ROWS = 8  # rows per engine call; a server rarely holds more conversations on one machine


class SharedEngines:
    """The engines loaded once that every conversation calls, and the batching around them.

    ``batch_window_ms`` None: conversations call the shared onnxruntime sessions directly, one call
    per step (``InferenceSession.run`` is thread-safe). A number (0-50): the runners whose steps
    batch (docs/batching.md) are wrapped so that concurrent conversations' steps share calls,
    each step waiting at most that long for company; each conversation is a ``member`` while it
    lives (``with engines.member():``), so steps never wait for conversations that are not there.
    """

    def __init__(self, agent: Agent, batch_window_ms: float | None = None):
        self.agent, self.batch_window_ms = agent, batch_window_ms
        self.members = BatchMembers()
        self.batched: tuple[BatchedRunner, ...] = ()
        if batch_window_ms is not None:
            self.batched = tuple(r for r in shared_engines(agent, self._wrap) if isinstance(r, BatchedRunner))

    def member(self) -> BatchMembers:
        """``with engines.member():`` around one conversation's life (a no-op count when not batching)."""
        return self.members.join()

    @property
    def shared_calls(self) -> int:
        """Engine calls so far that carried steps of more than one conversation."""
        return sum(r.batcher.stats.shared_calls for r in self.batched if r.batcher is not None)

    def close(self) -> None:
        """At shutdown: steps still waiting fail with ``BatcherClosed``; the running calls finish."""
        for runner in self.batched:
            runner.close()

    def _wrap(self, runner: Runner) -> BatchedRunner:
        return batched(runner, window_ms=self.batch_window_ms, max_batch=BATCH_MAX_ROWS, members=self.members)


def shared_engines(agent: Agent, wrap: Callable[[Runner], Runner]) -> list[Runner]:
    """Where the engines loaded once meet the conversations: THE place to wrap the shared runners.

    Puts ``wrap(runner)`` in place of each runner of ``agent.pipeline`` whose steps batch across
    conversations (docs/batching.md) and returns the wrapped ones; before any conversation starts,
    since each conversation's view copies the runners it finds. Cascade: the VAD, Whisper's
    decoder (its encoder's windows gain nothing) and the LLM, wrapped once when one graph runs
    both prompt chunks and decode steps (so both kinds of step meet in one batcher), else each
    graph on its own. Freeze-Omni: the pipeline's own ``wrap_shared_runners``. Other pipelines
    (VocalNet) run unwrapped.
    """
    pipeline = agent.pipeline
    if hasattr(pipeline, "wrap_shared_runners"):
        return pipeline.wrap_shared_runners(wrap)
    if agent.recipe != "cascade":
        return []
    llm, one_graph = pipeline.llm, pipeline.llm.one_graph
    pipeline.vad.runner = wrap(pipeline.vad.runner)
    pipeline.asr.decoder = wrap(pipeline.asr.decoder)
    llm.prefill_runner = wrap(llm.prefill_runner)
    llm.decode_runner = llm.prefill_runner if one_graph else wrap(llm.decode_runner)
    # Steps share a call only at equal token counts; drafts would give each conversation's decode
    # steps their own (1 + draft) count, so batched conversations decode one token per call.
    llm.tail = 0
    # Caches grow as each conversation fills its own (runtime/cache_growth.py), and only caches of
    # one capacity share a call. Not held at full size so that all would: a lone step or a group of
    # new conversations runs over 256 rows, not 1024 (GGUF-codes LLM, through the batcher: 11.0 vs
    # 16.5 ms alone, 29.5 vs 43.3 ms for 4 conversations; BENCHMARKS.md). Three or more
    # conversations decoding at once over different capacities would do better at full size.
    wrapped = [pipeline.vad.runner, pipeline.asr.decoder, llm.prefill_runner]
    return wrapped if one_graph else [*wrapped, llm.decode_runner]


class ConversationHost:
    """Loads a package once; ``handle`` runs one conversation per connection, up to ``max_sessions``."""

    def __init__(self, package: str | Path, *, max_sessions: int = 4, token: str | None = None,
                 allow_origins: Sequence[str] = (), tools: Sequence[Tool] = (), device: str = "cpu",
                 system_prompt: str | None = None, max_new_tokens: int | None = None,
                 options: SessionOptions = SessionOptions(), limits: Limits = Limits(),
                 batch_window_ms: float | None = DEFAULT_BATCH_WINDOW_MS, backend: str = "ort"):
        if max_sessions < 1:
            raise EdgevoiceError(f"max_sessions must be at least 1, got {max_sessions}")
        if batch_window_ms is not None and not 0 <= batch_window_ms <= 50:
            raise EdgevoiceError(f"batch_window_ms must be within 0..50 ms (or None: no batching), "
                                 f"got {batch_window_ms}")
        self.agent = Agent(package, backend=backend, device=device, system_prompt=system_prompt,
                           max_new_tokens=max_new_tokens, options=options)
        self.engines = SharedEngines(self.agent, batch_window_ms)
        for tool in tools:
            self.agent.add_tool(tool)
        self.recipe, self.max_sessions, self.limits = self.agent.recipe, max_sessions, limits
        self.token = token or None
        self.allow_origins = tuple(_origin_key(o) for o in allow_origins)
        self.active = 0  # conversations running now (read by routers)
        self._slots = threading.Lock()
        self._running: dict[str, Conversation] = {}
        self.finished: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)  # how recent ones ended

    # --- setup -------------------------------------------------------------------------------

    def tool(self, name: str | None = None, **options: Any):
        """Decorator: a tool every conversation gets (each with its own runner); as ``Agent.tool``."""
        return self.agent.tool(name, **options)

    def add_tool(self, tool: Tool) -> None:
        self.agent.add_tool(tool)

    # --- checks front ends make before the upgrade ----------------------------------------------

    def token_ok(self, presented: str | None) -> bool:
        """True when no token is required or ``presented`` is it (compared in constant time)."""
        if self.token is None:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), self.token.encode())

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        """A browser's ``Origin`` must be the page's own host (``host``: the Host header) or allowed;
        clients that send none (programs, not browsers) pass."""
        if origin is None:
            return True
        key = _origin_key(origin)
        return key in self.allow_origins or (host is not None and urlsplit(key).netloc == host.lower())

    # --- conversations -------------------------------------------------------------------------

    async def handle(self, transport: Transport, *, token_ok: bool = True, origin_ok: bool = True) -> None:
        """Run one conversation on ``transport`` until it ends; refusals close it with their code."""
        if not token_ok or not origin_ok:
            what = "token" if not token_ok else "origin"
            return await _refuse(transport, wire.POLICY, f"the {what} was refused")
        if not self._take_slot():
            return await _refuse(transport, wire.TRY_AGAIN, wire.server_full_reason(self.max_sessions, self.max_sessions))
        try:
            hello = await self._hello(transport)
            if hello is None:
                return
            with self.engines.member():  # batched steps wait for this conversation only while it lives
                await self._converse(transport, hello)
        finally:
            with self._slots:
                self.active -= 1

    async def _converse(self, transport: Transport, hello: wire.Hello) -> None:
        try:  # a view and a session: a Freeze-Omni one prefills its system prompt, off the event loop
            conversation = await asyncio.to_thread(Conversation, self, transport, hello, asyncio.get_running_loop())
        except Exception as exc:  # noqa: BLE001 - told to the client, the server goes on
            return await _refuse(transport, wire.SERVER_ERROR, f"cannot start a conversation: {exc}")
        self._running[conversation.id] = conversation
        try:
            outcome = await conversation.run()
        finally:
            del self._running[conversation.id]
        self.finished.append(outcome)

    def close(self) -> None:
        """Release the engines' batchers (after ``close_all``); the host takes no conversations after."""
        self.engines.close()

    async def close_all(self, code: int = wire.GOING_AWAY, reason: str = "the server is shutting down") -> None:
        """End every conversation now with ``code`` (Ctrl-C: 1001); returns once they are closed."""
        running = list(self._running.values())
        for conversation in running:
            conversation.end(code, reason)
        await asyncio.gather(*(c.closed.wait() for c in running))

    def _take_slot(self) -> bool:
        with self._slots:
            if self.active >= self.max_sessions:
                return False
            self.active += 1
            return True

    async def _hello(self, transport: Transport) -> wire.Hello | None:
        try:
            message = await asyncio.wait_for(transport.recv(), self.limits.hello_timeout_s)
            return wire.parse_hello(message)
        except wire.ProtocolError as exc:
            await _refuse(transport, exc.code, str(exc))
        except asyncio.TimeoutError:
            await _refuse(transport, wire.UNSUPPORTED, f"no hello within {self.limits.hello_timeout_s:g} s")
        except Exception:  # noqa: BLE001 - the peer left before saying hello
            pass
        return None


class _SocketIO(AppAudioIO):
    """An ``AppAudioIO`` that also tells the client to drop its queued audio at every flush."""

    def __init__(self, on_flush, **rates: int):
        super().__init__(**rates)
        self._on_flush = on_flush

    def flush_speaker(self) -> None:
        super().flush_speaker()
        self._on_flush()


class Conversation:
    """One client: its pipeline view, session, I/O, event bus and bounded outgoing queue."""

    def __init__(self, host: ConversationHost, transport: Transport, hello: wire.Hello, loop: asyncio.AbstractEventLoop):
        self.id = secrets.token_hex(8)
        self.host, self.transport, self.limits = host, transport, host.limits
        agent = host.agent
        self.rate, self.output_rate = hello.rate, hello.output_rate or agent.speaker_rate
        self.loop = loop  # the transport's event loop: every queue and future below belongs to it
        self.outbox: asyncio.Queue = asyncio.Queue(self.limits.send_queue)
        self.peak_queue = 0
        self.bus = EventBus()
        self.bus.subscribe(self._on_event)  # before the session exists: its first warnings come from its constructor
        self.io = _SocketIO(self._on_flush, input_rate=self.rate, output_rate=self.output_rate,
                            mic_rate=agent.mic_rate, speaker_rate=agent.speaker_rate)
        self.session = open_session(agent.pipeline.new_conversation(), agent.recipe, self.io, agent.options,
                                    self.bus, agent.tools)
        self.closed = asyncio.Event()
        self._ending: asyncio.Future = self.loop.create_future()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen, name=f"edgevoice-serve-{self.id}", daemon=True)
        self._in_samples = self._out_samples = 0

    async def run(self) -> dict[str, Any]:
        """Ready, then frames in and out until bye, an error, the client leaving or ``end``; how it ended."""
        self._put(wire.ready_message(self.id, self.rate, self.output_rate, self.host.max_sessions, self.host.recipe))
        self.io.start()
        self._thread.start()
        sender = asyncio.create_task(self._send_all())
        receiver = asyncio.create_task(self._receive_all())
        try:
            code, reason = await self._ending
            receiver.cancel()
            await self._stop_session()
            await self._close(sender, code, reason)
        finally:
            if not self._stopping.is_set():  # cancelled from outside: the threads must still end
                self._stopping.set()
                self.io.stop()
                self.session.close()
            receiver.cancel()
            sender.cancel()
            self.closed.set()
        return {"session": self.id, "code": code, "reason": reason, "peak_queue": self.peak_queue,
                "summary": self.session.summary()}

    def end(self, code: int | None, reason: str = "") -> None:
        """End the conversation (``code`` None: the client is gone). The first call wins; loop thread only."""
        if not self._ending.done():
            self._ending.set_result((code, reason))

    # --- receiving ----------------------------------------------------------------------------

    async def _receive_all(self) -> None:
        try:
            while True:
                message = await asyncio.wait_for(self.transport.recv(), self.limits.idle_timeout_s)
                if isinstance(message, str):
                    wire.check_client_text(message)  # "bye" is the only message type
                    return self.end(wire.NORMAL, "bye")
                self._on_audio(message)
        except wire.ProtocolError as exc:
            self.end(exc.code, str(exc))
        except asyncio.TimeoutError:
            self.end(wire.NORMAL, f"no audio for {self.limits.idle_timeout_s:g} s")
        except asyncio.CancelledError:
            raise
        except TransportClosed as exc:
            if exc.code == wire.SLOW_CONSUMER:  # the front's queue towards the client is full
                return self._stopped_reading(str(exc))
            self.end(None)
        except Exception:  # noqa: BLE001 - the transport's way of saying the client left
            self.end(None)

    def _on_audio(self, frame: bytes) -> None:
        """One mic frame in, exactly one speaker frame of the same duration out (the lockstep contract)."""
        self.io.write_mic(wire.pcm16_to_float(frame, self.rate))
        self._in_samples += len(frame) // 2
        due = self._in_samples * self.output_rate // self.rate  # integer: durations never drift
        played = self.io.read_speaker(due - self._out_samples)
        self._out_samples = due
        self._put(wire.float_to_pcm16(played))

    # --- sending ------------------------------------------------------------------------------

    def _put(self, message) -> None:
        """Queue a message for the client (loop thread); a full queue means the client stopped reading."""
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            return self._stopped_reading(f"{self.limits.send_queue} messages queued")
        self.peak_queue = max(self.peak_queue, self.outbox.qsize())

    def _stopped_reading(self, detail: str) -> None:
        """The one way a slow consumer ends: 4000, nothing more queued or sent (``_close``)."""
        self.end(wire.SLOW_CONSUMER, f"the client stopped reading ({detail})")

    def _on_event(self, event: Event) -> None:
        # Any thread (listen, think, speak, tools): serialized here, queued in order on the loop.
        self._from_thread(wire.event_message(event))

    def _on_flush(self) -> None:
        # Called by the listen thread just before it emits barge_in: the same ordered path, so flush comes first.
        self._from_thread(wire.FLUSH_MESSAGE)

    def _from_thread(self, message: str) -> None:
        try:
            self.loop.call_soon_threadsafe(self._put, message)
        except RuntimeError:  # the server's loop is gone (shut down): nobody to tell
            pass

    async def _send_all(self) -> None:
        try:
            while (message := await self.outbox.get()) is not _END:
                await self.transport.send(message)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the client left while we were sending
            self.loop.call_soon(self.end, None)

    # --- ending -------------------------------------------------------------------------------

    def _listen(self) -> None:
        try:
            while not self._stopping.is_set():
                self.session.step()  # False after a second without audio: the client may be paused
        except BaseException as exc:  # noqa: BLE001 - reported to the client as 1011
            try:
                self.loop.call_soon_threadsafe(self.end, wire.SERVER_ERROR, f"the conversation failed: {type(exc).__name__}")
            except RuntimeError:  # the server's loop is gone
                pass

    async def _stop_session(self) -> None:
        self._stopping.set()
        self.io.stop()
        await asyncio.to_thread(self._thread.join, 5.0)
        await asyncio.to_thread(self.session.close)

    async def _close(self, sender: asyncio.Task, code: int | None, reason: str) -> None:
        if code is None or code == wire.SLOW_CONSUMER:  # nobody to tell, or nobody listening
            sender.cancel()
            if code is not None:
                await _quiet(self.transport.close(code, _short(reason)), self.limits.drain_timeout_s)
            return
        if code in (wire.NORMAL, wire.GOING_AWAY):
            summary = self.session.summary()
            self.bus.emit(Event(self.io.clock.now(), ev.SESSION_END, self.session.turn, {**summary, "reason": reason}))
        if code != wire.NORMAL:
            self.loop.call_soon_threadsafe(self._put, wire.error_message(reason))
        self.loop.call_soon_threadsafe(self._force_put, _END)  # after every event scheduled so far
        try:
            await asyncio.wait_for(sender, self.limits.drain_timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            sender.cancel()
        await _quiet(self.transport.close(code, _short(reason)), self.limits.drain_timeout_s)

    def _force_put(self, item) -> None:
        while True:
            try:
                return self.outbox.put_nowait(item)
            except asyncio.QueueFull:
                self.outbox.get_nowait()  # the end must get in: the oldest message gives way


async def _refuse(transport: Transport, code: int, reason: str) -> None:
    await _quiet(transport.send(wire.error_message(reason)), 2.0)
    await _quiet(transport.close(code, _short(reason)), 2.0)


async def _quiet(step, timeout: float) -> None:
    """Await ``step``, ignoring a peer that is already gone or too slow to answer."""
    try:
        await asyncio.wait_for(step, timeout)
    except Exception:  # noqa: BLE001 - closing towards a dead client cannot fail louder
        pass


def _short(reason: str) -> str:
    """A close reason fits in 123 bytes (RFC 6455); the full text went in an ``error`` message."""
    encoded = reason.encode()
    return reason if len(encoded) <= 123 else encoded[:120].decode(errors="ignore") + "..."


def _origin_key(origin: str) -> str:
    return origin.strip().rstrip("/").lower()
