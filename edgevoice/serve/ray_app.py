"""`edgevoice serve` scaled out over machines and GPUs with Ray Serve.

Each Ray Serve replica is one `serve` process in miniature: it loads the engine package once into
one `ConversationHost` and holds up to ``max_sessions_per_replica`` conversations, each one
WebSocket at ``/ws`` (the wire protocol of `edgevoice serve`, unchanged). The same replicas serve
the kiosk page (``/`` and the files of ``edgevoice/serve/web/``) and ``/healthz``.

How conversations reach replicas (why the numbers below are what they are):

- A WebSocket is one Ray Serve request that lasts the whole conversation, so a conversation stays
  on the replica that accepted it, and the replica's count of ongoing requests is its count of
  conversations.
- ``max_ongoing_requests`` is the session cap plus one *refusal slot*: when every replica holds
  its cap, the next conversation still reaches a replica, whose `ConversationHost` refuses it with
  close code 1013 ("server full") as the protocol says. Without that slot Ray would hold the
  connection in the proxy's queue, and the client would wait in silence instead.
- `ray_router.MostRoomRouter` sends each new conversation to the replica with the fewest ongoing
  requests of all, not of two random ones (Ray's default), so a refusal happens only when every
  replica is at its cap.
- ``max_queued_requests`` bounds the proxy's queue (a burst of connections while refusal slots are
  busy); beyond it Ray's proxy itself refuses the upgrade with an HTTP 5xx status, not 1013.
- With ``max_replicas`` above ``replicas`` the deployment autoscales on ongoing conversations per
  replica, aiming at ``target_sessions_per_replica``.
- A replica's sends never wait for the client (Ray's proxy takes them at once), so the bound on
  what a client that stops reading may hold is kept in the proxy: ``SlowReaderGuard``, which each
  node's proxy loads through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (``start`` sets it for
  the Ray it starts; on a cluster of your own, export it on every node before ``ray start``).
"""

# No `from __future__ import annotations` here: FastAPI reads the route parameters' types from
# the methods Ray Serve rebinds, and string annotations there turn `websocket: WebSocket` into a
# required query parameter (every upgrade refused with 403).

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.manifest import read_manifest
from edgevoice.serve import protocol as wire
from edgevoice.serve.conversation import DEFAULT_BATCH_WINDOW_MS, ConversationHost, Limits, TransportClosed
from edgevoice.serve.server import SOCKET_PATH, WEB_DIR, content_type, is_loopback, presented_token, web_file

try:
    from fastapi import FastAPI, WebSocket
    from ray import serve
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.websockets import WebSocketDisconnect
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError.for_module(exc.name or "ray", "ray", "Serving on Ray Serve") from exc

APP_NAME = "edgevoice"
ROUTER_CLASS = "edgevoice.serve.ray_router:MostRoomRouter"
# Ray Serve's proxy calls this function at start and wraps its ASGI app in the middlewares it returns.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "edgevoice.serve.ray_app:proxy_middlewares"


@dataclass(frozen=True)
class RayServeOptions:
    """What `edgevoice serve-ray` deploys; every node must see ``package`` at the same path."""

    package: str
    max_sessions_per_replica: int = 4
    replicas: int = 2  # the fixed count, or the autoscaler's minimum when max_replicas is larger
    max_replicas: int | None = None  # None: a fixed deployment of ``replicas``
    cores_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    device: str = "cpu"  # where each replica runs its engines: cpu or cuda (with gpus_per_replica >= 1)
    host: str = "127.0.0.1"  # where every node's Ray Serve proxy listens
    port: int = 8000
    token: str | None = None
    insecure_no_token: bool = False  # only on loopback: conversations without a token
    allow_origins: tuple[str, ...] = ()
    target_sessions_per_replica: float | None = None  # autoscaling target; None: 3/4 of the cap
    max_queued_connections: int = 64  # the proxy's bounded queue (connections waiting to be routed)
    drain_timeout_s: float = 120.0  # a replica being stopped lets its conversations end for this long, then 1001
    batch_window_ms: float | None = DEFAULT_BATCH_WINDOW_MS  # cross-session batching in each replica; None: off
    host_options: dict[str, Any] = field(default_factory=dict)  # extra ConversationHost arguments

    def validate(self) -> None:
        """Raise EdgevoiceError for settings that cannot run or would be unsafe."""
        if self.max_sessions_per_replica < 1:
            raise EdgevoiceError("--max-sessions-per-replica must be at least 1")
        if self.replicas < 1 or (self.max_replicas is not None and self.max_replicas < self.replicas):
            raise EdgevoiceError("--replicas must be at least 1 and --max-replicas at least --replicas")
        if self.cores_per_replica <= 0 or self.gpus_per_replica < 0:
            raise EdgevoiceError("--cores-per-replica must be above 0 and --num-gpus-per-replica at least 0")
        if self.batch_window_ms is not None and not 0 <= self.batch_window_ms <= 50:
            raise EdgevoiceError(f"--batch-window-ms must be within 0..50, got {self.batch_window_ms:g}")
        if self.token == "":
            raise EdgevoiceError("an empty --token protects nothing; give a token, or --insecure-no-token on loopback")
        if self.token and self.insecure_no_token:
            raise EdgevoiceError("--token and --insecure-no-token contradict each other; give one of them")
        if not self.token:
            if not self.insecure_no_token:
                raise EdgevoiceError("a token is required: pass --token T (or --insecure-no-token on loopback)")
            if not is_loopback(self.host):
                raise EdgevoiceError(f"--insecure-no-token is only allowed on loopback, not on --host {self.host}; "
                                     "pass --token T")


# --- the request checks of the protocol (before the WebSocket upgrade) -------------------------

def refusal(websocket: WebSocket, host: Any) -> tuple[int, str] | None:
    """(HTTP status, reason) when the upgrade must be refused, else None; the checks are the host's own."""
    headers = websocket.headers
    if not host.token_ok(presented_token(websocket.url.query, headers.get("authorization"))):
        return 401, "a valid token is required (?token=T or Authorization: Bearer T)"
    if not host.origin_ok(headers.get("origin"), headers.get("host")):
        return 403, "this page's origin is not allowed (server option --allow-origin)"
    return None


async def refuse_upgrade(websocket: WebSocket, status: int, reason: str) -> None:
    # A plain HTTP answer where the server can send one (uvicorn can, through Ray's proxy too);
    # otherwise closing before accept makes the server answer 403.
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(Response(reason, status_code=status, media_type="text/plain"))
    else:
        await websocket.close(code=1008, reason=reason)


# --- the replica -------------------------------------------------------------------------------

class StarletteTransport:
    """A Starlette WebSocket as the transport `ConversationHost.handle` talks to.

    ``session_prefix`` goes in front of the session id of the ``ready`` message, so a client (and
    an operator reading logs) can tell which replica holds the conversation.
    """

    def __init__(self, websocket: WebSocket, session_prefix: str = ""):
        self._websocket = websocket
        self._session_prefix = session_prefix
        self._ready_seen = False

    async def recv(self) -> bytes | str:
        message = await self._websocket.receive()
        if message["type"] == "websocket.disconnect":
            code = message.get("code")
            raise TransportClosed(message.get("reason") or f"the client closed the conversation (code {code})",
                                  code=code)
        if message.get("bytes") is not None:
            return message["bytes"]
        return message.get("text") or ""

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str) and not self._ready_seen:
            data = self._tag_ready(data)
        try:
            if isinstance(data, bytes):
                await self._websocket.send_bytes(data)
            else:
                await self._websocket.send_text(data)
        except (WebSocketDisconnect, RuntimeError) as exc:  # RuntimeError: sending after the close
            raise TransportClosed(f"the client is gone: {exc}") from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._websocket.close(code=code, reason=reason)

    def _tag_ready(self, text: str) -> str:
        try:
            message = json.loads(text)
        except ValueError:
            return text
        if not isinstance(message, dict) or message.get("type") != "ready":
            return text
        self._ready_seen = True
        message["session"] = f"{self._session_prefix}{message.get('session', '')}"
        return json.dumps(message)


# --- the proxy: what a client that stops reading may hold --------------------------------------

def proxy_middlewares() -> list:
    """The middlewares of every node's Ray Serve proxy (named by ``PROXY_CALLBACK_ENV``)."""
    from starlette.middleware import Middleware

    return [Middleware(SlowReaderGuard)]


class SlowReaderGuard:
    """ASGI middleware in Ray Serve's proxy: `serve`'s bounded outgoing queue, for ``/ws``.

    Ray 2.60's proxy takes a replica's messages as fast as the replica sends them and only then
    waits for the client's socket, so a client that stops reading piles them up in the proxy
    (about 44 KB per second of 22.05 kHz audio). Here each conversation's messages towards the
    client wait in a queue of ``Limits.send_queue`` messages, the bound of a `serve` conversation's
    own queue, drained into the socket by one task. When it is full the client stopped reading:
    the replica hears a disconnect with code 4000, which its conversation ends as `serve` ends a
    full queue (``Conversation._stopped_reading``), later messages are dropped, and the client is
    sent close 4000 for when it reads again (within ``Limits.idle_timeout_s``, then it is let go).
    """

    def __init__(self, app, send_queue: int = Limits().send_queue, socket_path: str = SOCKET_PATH):
        self.app, self.send_queue, self.socket_path = app, send_queue, socket_path

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "websocket" or scope.get("path") != self.socket_path:
            return await self.app(scope, receive, send)
        link = _BoundedLink(receive, send, self.send_queue)
        try:
            await self.app(scope, link.receive, link.send)
        finally:
            await link.finish()


class _BoundedLink:
    """One WebSocket's ``receive`` / ``send`` in the proxy, with the outgoing side bounded."""

    def __init__(self, receive, send, bound: int):
        self._receive, self._send, self.bound = receive, send, bound
        self.queue: asyncio.Queue = asyncio.Queue(bound)
        self.tripped = asyncio.Event()
        self.pump = asyncio.create_task(self._pump())
        self.closer: asyncio.Task | None = None

    async def send(self, message: dict) -> None:
        if self.tripped.is_set():
            return  # the client is being dropped: nothing more is kept for it
        if self.pump.done():  # the socket failed (the client left): the proxy hears it as from uvicorn
            raise self.pump.exception() or RuntimeError("the client's socket is closed")
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self._trip()

    async def receive(self) -> dict:
        if self.tripped.is_set():
            return self._slow_disconnect()
        receiving = asyncio.ensure_future(self._receive())
        tripped = asyncio.ensure_future(self.tripped.wait())
        await asyncio.wait((receiving, tripped), return_when=asyncio.FIRST_COMPLETED)
        tripped.cancel()
        if receiving.done():
            return receiving.result()
        receiving.cancel()  # at most one client frame lost, of a conversation that is ending
        return self._slow_disconnect()

    async def finish(self) -> None:
        """After the proxy's app returned: let queued messages go out (bounded in time), then stop."""
        if self.closer is not None:
            await self.closer
        elif not self.pump.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.queue.join(), Limits().drain_timeout_s)
        if self.pump.done() and not self.pump.cancelled():
            self.pump.exception()  # a client that left: already heard by the proxy, not an error to log
        self.pump.cancel()

    def _trip(self) -> None:
        self.tripped.set()
        self.pump.cancel()  # it waits on a socket nobody reads
        while not self.queue.empty():  # what the client did not read is dropped now, not at the end
            self.queue.get_nowait()
            self.queue.task_done()
        self.closer = asyncio.create_task(self._close_slow())

    async def _close_slow(self) -> None:
        close = {"type": "websocket.close", "code": wire.SLOW_CONSUMER, "reason": self._reason()}
        with contextlib.suppress(Exception):  # a client that never reads again never gets it
            await asyncio.wait_for(self._send(close), Limits().idle_timeout_s)

    async def _pump(self) -> None:
        while True:
            message = await self.queue.get()
            try:
                await self._send(message)
            finally:
                self.queue.task_done()  # also when cancelled mid-send: join() must not wait for it

    def _slow_disconnect(self) -> dict:
        return {"type": "websocket.disconnect", "code": wire.SLOW_CONSUMER, "reason": self._reason()}

    def _reason(self) -> str:
        return f"{self.bound} messages queued in the proxy"


def load_conversation_host(options: RayServeOptions) -> Any:
    """The engine package loaded once, the way `edgevoice serve` loads it."""
    return ConversationHost(options.package, max_sessions=options.max_sessions_per_replica, token=options.token,
                            allow_origins=options.allow_origins, device=options.device,
                            batch_window_ms=options.batch_window_ms, **options.host_options)


ingress = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name="ConversationReplica")
@serve.ingress(ingress)
class ConversationReplica:
    """One replica: one loaded package, up to ``max_sessions_per_replica`` conversations."""

    def __init__(self, options: RayServeOptions):
        self._host = load_conversation_host(options)
        self._replica = serve.get_replica_context().replica_tag

    @ingress.websocket("/ws")
    async def conversation(self, websocket: WebSocket) -> None:
        refused = refusal(websocket, self._host)
        if refused is not None:
            await refuse_upgrade(websocket, *refused)
            return
        await websocket.accept()
        transport = StarletteTransport(websocket, session_prefix=f"{self._replica}/")
        await self._host.handle(transport)

    async def __del__(self) -> None:
        # Ray calls this once the replica's drain is over (scale-down, redeploy, shutdown): whoever is
        # still talking hears 1001 "going away" rather than a dropped connection.
        await self._host.close_all()
        self._host.close()

    @ingress.get("/healthz")
    async def health(self) -> JSONResponse:
        return JSONResponse({"replica": self._replica, "active": self._host.active,
                             "max_sessions": self._host.max_sessions, "pid": os.getpid()})

    @ingress.get("/")
    async def index(self) -> Response:
        return self._web_response("index.html")

    @ingress.get("/{name}")
    async def static(self, name: str) -> Response:
        return self._web_response(name)

    def _web_response(self, name: str) -> Response:
        path = web_file(WEB_DIR, name)  # the same rules as `edgevoice serve`
        if path is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type=content_type(path),
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


# --- deploying ---------------------------------------------------------------------------------

def deployment_options(options: RayServeOptions) -> dict[str, Any]:
    """Ray Serve settings for ConversationReplica (see the module docstring for why)."""
    from ray.serve.config import RequestRouterConfig

    settings: dict[str, Any] = {
        # The cap plus one refusal slot, so a conversation beyond the cap hears 1013 from a replica.
        "max_ongoing_requests": options.max_sessions_per_replica + 1,
        "max_queued_requests": options.max_queued_connections,
        "ray_actor_options": {"num_cpus": options.cores_per_replica, "num_gpus": options.gpus_per_replica},
        "request_router_config": RequestRouterConfig(request_router_class=ROUTER_CLASS),
        # Stopping a replica (scale-down) first waits for its conversations to end on their own.
        "graceful_shutdown_timeout_s": options.drain_timeout_s,
    }
    if options.max_replicas is None or options.max_replicas == options.replicas:
        settings["num_replicas"] = options.replicas
    else:
        target = options.target_sessions_per_replica or max(0.75 * options.max_sessions_per_replica, 0.5)
        settings["autoscaling_config"] = {
            "min_replicas": options.replicas, "initial_replicas": options.replicas,
            "max_replicas": options.max_replicas, "target_ongoing_requests": target,
        }
    return settings


def build_app(options: RayServeOptions):
    """The Ray Serve application: ConversationReplica with the settings of ``options``."""
    options.validate()
    return ConversationReplica.options(**deployment_options(options)).bind(options)


def start(options: RayServeOptions, ray_address: str | None = None) -> None:
    """Deploy on the running Ray cluster (``ray_address``, or ``RAY_ADDRESS``, or a local one) and
    return once every replica has loaded the package."""
    import ray

    # Fail here, in one line, rather than in every replica's constructor (which Ray retries).
    read_manifest(options.package)
    app = build_app(options)
    if not ray.is_initialized():
        # A Ray started here passes its environment to its proxies: they load SlowReaderGuard.
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
        ray.init(address=ray_address, include_dashboard=False)
    # A proxy on every node: clients (or a load balancer) may reach the cluster through any node.
    serve.start(proxy_location="EveryNode", http_options={"host": options.host, "port": options.port})
    serve.run(app, name=APP_NAME, route_prefix="/")
