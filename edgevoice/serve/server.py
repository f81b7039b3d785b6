"""`edgevoice serve`: one process, one load of the engines, many conversations over WebSocket.

    server = Server("engines/cpu", max_sessions=4)          # a random token unless one is given
    @server.tool(description="Current time")
    def get_time():
        return time.strftime("%H:%M")
    asyncio.run(server.serve())                             # or: with server.start(): ... (a thread)

HTTP routes, on the same port (``websockets``' asyncio server; ``process_request`` answers before
any upgrade): ``/ws`` is the conversation socket (token and origin checked here: 401 / 403);
``/`` serves ``web/index.html`` and ``/<name>`` any plain file directly in ``edgevoice/serve/web/``
(the kiosk page); anything else is 404. Each accepted socket is handed to
``ConversationHost.handle`` (``edgevoice.serve.conversation``), which speaks the protocol.

Security defaults: a token is required (generated when none is given) unless ``insecure_no_token``
is set, which only a loopback address allows; a browser's ``Origin`` must be the page's own host
or one of ``allow_origins``; at most ``max_sessions`` conversations (more are closed with 1013);
incoming messages are at most 64 KiB and 16 queued (the library's bounds), outgoing ones bounded
per conversation (``Limits``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import mimetypes
import secrets
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, urlsplit

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.cascade.session import SessionOptions
from edgevoice.runtime.tools import Tool
from edgevoice.serve import protocol as wire
from edgevoice.serve.conversation import DEFAULT_BATCH_WINDOW_MS, ConversationHost, Limits, TransportClosed

WEB_DIR = Path(__file__).resolve().parent / "web"
SOCKET_PATH = "/ws"
MAX_MESSAGE_BYTES = 64 * 1024  # 200 ms of 48 kHz PCM16 is 19,200 bytes; larger messages close with 1009
CONTENT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".html": "text/html; charset=utf-8",
                 ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebSocketTransport:
    """A ``websockets`` connection as the ``Transport`` a ``ConversationHost`` speaks over."""

    def __init__(self, connection):
        self.connection = connection

    async def recv(self) -> bytes | str:
        from websockets.exceptions import ConnectionClosed

        try:
            return await self.connection.recv()
        except ConnectionClosed as exc:
            raise TransportClosed(str(exc)) from None

    async def send(self, message: bytes | str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self.connection.send(message)
        except ConnectionClosed as exc:
            raise TransportClosed(str(exc)) from None

    async def close(self, code: int, reason: str) -> None:
        await self.connection.close(code, reason)


class Server:
    """The websockets app around a ``ConversationHost``: routes, checks, start and stop."""

    def __init__(self, package: str | Path, *, host: str = "127.0.0.1", port: int = 8765, max_sessions: int = 4,
                 token: str | None = None, insecure_no_token: bool = False, allow_origins: Sequence[str] = (),
                 tools: Sequence[Tool] = (), web_dir: str | Path = WEB_DIR, device: str = "cpu",
                 system_prompt: str | None = None, max_new_tokens: int | None = None,
                 options: SessionOptions = SessionOptions(), limits: Limits = Limits(),
                 batch_window_ms: float | None = DEFAULT_BATCH_WINDOW_MS, backend: str = "ort"):
        self.token = _token_policy(token, insecure_no_token, host)
        self.host, self.port, self.web_dir = host, port, Path(web_dir)
        self.backend = check_backend(backend, package)  # trt: one line naming what is missing, before any load
        self.conversations = ConversationHost(package, max_sessions=max_sessions, token=self.token,
                                              allow_origins=allow_origins, tools=tools, device=device,
                                              system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                                              options=options, limits=limits, batch_window_ms=batch_window_ms,
                                              backend=backend)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listening = threading.Event()
        self.error: BaseException | None = None

    # --- the library API ------------------------------------------------------------------------

    def tool(self, name: str | None = None, **options: Any):
        """Decorator: a tool every conversation gets, each conversation with its own runner."""
        return self.conversations.tool(name, **options)

    @property
    def url(self) -> str:
        """The kiosk page, with the token (what to open in a browser)."""
        query = f"?token={self.token}" if self.token else ""
        return f"http://{_netloc(self.host, self.port)}/{query}"

    @property
    def ws_url(self) -> str:
        return f"ws://{_netloc(self.host, self.port)}{SOCKET_PATH}"

    async def serve(self, ready: threading.Event | None = None) -> None:
        """Listen until ``stop()`` (or the task is cancelled); then close every conversation with 1001."""
        from websockets.asyncio.server import serve

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self._handler, self.host, self.port, process_request=self._process_request,
                         max_size=MAX_MESSAGE_BYTES, max_queue=16, close_timeout=2,
                         compression=None) as server:  # PCM hardly compresses; deflate costs CPU per frame
            self.port = server.sockets[0].getsockname()[1]  # port 0: the one the system chose
            self._listening.set()
            if ready is not None:
                ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.conversations.close_all(wire.GOING_AWAY, "the server is shutting down")
                self.conversations.close()  # the batchers' threads end with the server

    def stop(self) -> None:
        """Stop serving (from any thread); conversations are closed with 1001."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def start(self) -> Server:
        """Serve on a thread of its own (returns once listening); a context manager that stops it."""
        def run() -> None:
            try:
                asyncio.run(self.serve())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                self.error = exc
                self._listening.set()

        self._thread = threading.Thread(target=run, name="edgevoice-serve", daemon=True)
        self._thread.start()
        self._listening.wait()
        if self.error is not None:
            raise EdgevoiceError(f"cannot serve on {_netloc(self.host, self.port)}: {self.error}")
        return self

    def run_in_loop(self, coroutine) -> Any:
        """Run ``coroutine`` on the server's event loop from another thread (tests, admin); its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- HTTP and the socket --------------------------------------------------------------------

    def _process_request(self, connection, request):
        parts = urlsplit(request.path)
        if parts.path != SOCKET_PATH:
            return self._static(connection, parts.path)
        host = self.conversations
        if not host.token_ok(presented_token(parts.query, request.headers.get("Authorization"))):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is required: ?token=... or "
                                                               "Authorization: Bearer ...\n")
        if not host.origin_ok(request.headers.get("Origin"), request.headers.get("Host")):
            return connection.respond(HTTPStatus.FORBIDDEN, "this origin may not open conversations here\n")
        return None  # go on with the upgrade

    def _static(self, connection, path: str):
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        file = web_file(self.web_dir, "index.html" if path == "/" else path[1:])
        if file is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        body = file.read_bytes()
        headers = Headers({"Content-Type": content_type(file), "Content-Length": str(len(body)),
                           "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
        return Response(200, "OK", headers, body)

    async def _handler(self, connection) -> None:
        # process_request let the upgrade through: the token and the origin passed.
        await self.conversations.handle(WebSocketTransport(connection), token_ok=True, origin_ok=True)


def presented_token(query: str, authorization: str | None) -> str | None:
    """The token a client presented: ``Authorization: Bearer T`` first, else ``?token=T`` in the
    query string (browsers cannot set headers on a WebSocket); None when neither is there."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    values = parse_qs(query).get("token")
    return values[0] if values else None


def web_file(web_dir: str | Path, name: str) -> Path | None:
    """The file ``name`` directly inside ``web_dir``, or None: no folders, no hidden files, no
    ``..`` and no links out of the folder (the page's files are all that is served)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    folder = Path(web_dir).resolve()
    file = folder / name
    return file if file.is_file() and file.resolve().parent == folder else None


def content_type(file: Path) -> str:
    """The Content-Type to serve ``file`` with (the module's table first, then the system's guess)."""
    return CONTENT_TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"


def _token_policy(token: str | None, insecure_no_token: bool, host: str) -> str | None:
    """The token the server requires; None only when explicitly allowed, and only on loopback."""
    if insecure_no_token:
        if token:
            raise EdgevoiceError("--token and --insecure-no-token contradict each other; give one of them")
        if not is_loopback(host):
            raise EdgevoiceError(f"--insecure-no-token is only allowed on a loopback address (127.0.0.1, ::1); "
                                 f"{host} is reachable from other machines: give --token instead")
        return None
    if token == "":
        raise EdgevoiceError("an empty --token protects nothing; give a token, or --insecure-no-token on loopback")
    return token or secrets.token_urlsafe(16)


SERVE_BACKENDS = ("ort", "trt")


def check_backend(backend: str, package: str | Path) -> str:
    """``backend`` when this machine can serve ``package`` with it; else one line naming all it lacks.

    ``trt`` needs an NVIDIA GPU, TensorRT and cuda-python (the ``trt`` extra) and engines that
    ``edgevoice build`` made for the package. Probed without importing TensorRT (creating its
    objects without a GPU can crash), so every missing piece is named at once, before any engine loads.
    """
    if backend not in SERVE_BACKENDS:
        raise EdgevoiceError(f"--backend {backend} is not one serve runs; choose {' or '.join(SERVE_BACKENDS)}")
    if backend == "ort":
        return backend
    from edgevoice.backends.cuda import cuda_device_count
    from edgevoice.manifest import read_manifest

    missing = []
    if cuda_device_count() == 0:
        missing.append("an NVIDIA GPU (none found)")
    if not _importable("tensorrt"):
        missing.append("TensorRT (the tensorrt Python package: `sudo apt install python3-libnvinfer` on a Jetson, "
                       "`pip install 'edgevoice[trt]'` elsewhere)")
    if not (_importable("cuda.bindings") or _importable("cuda.cudart")):
        missing.append("cuda-python (`pip install 'edgevoice[trt]'`)")
    manifest = read_manifest(package)
    unbuilt = [name for name, component in manifest.components.items() if component.engine is None]
    if unbuilt:
        missing.append(f"TensorRT engines for {', '.join(unbuilt)} (run `edgevoice build {manifest.directory}` "
                       "on the target)")
    if missing:
        raise EdgevoiceError(f"--backend trt needs {'; '.join(missing)}; or serve with --backend ort")
    return backend


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False




def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
