"""`edgevoice serve`: many conversations over WebSocket from one load of a package's engines.

Prints where to connect, the token and the session cap; Ctrl-C (or SIGTERM) closes every
conversation with 1001 and exits.

``--max-sessions`` defaults to 4, or with ``--backend trt`` to the conversations the target's memory
holds with the built engines when that is fewer (``Manifest.sessions_held``, recorded by
`edgevoice build`); a larger explicit value is refused there, since every TensorRT session keeps
its own state and I/O buffers on the GPU. onnxruntime keeps them in host memory, where the
package records no such bound.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import typer
from rich.console import Console

from edgevoice.errors import EdgevoiceError


def serve(
    package: Path = typer.Option(..., help="Engine package exported with --model cascade (or freeze-omni / tiny)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface; needs a token)."),
    port: int = typer.Option(8765, min=0, max=65535, help="TCP port for the page and the /ws socket (0: any free one)."),
    max_sessions: int = typer.Option(None, min=1, help="Conversations at once; more are refused with close code 1013. "
                                                       "Default: 4, or fewer with --backend trt when the target's "
                                                       "memory holds fewer (recorded by `edgevoice build`)."),
    token: str = typer.Option(None, help="The token clients must present (?token=T or Authorization: Bearer T); "
                                         "default: a random one, printed below."),
    insecure_no_token: bool = typer.Option(False, "--insecure-no-token",
                                           help="Accept conversations without a token (loopback addresses only)."),
    allow_origin: list[str] = typer.Option(None, "--allow-origin",
                                           help="A page origin besides the server's own that may open conversations "
                                                "(e.g. https://kiosk.example.com); repeat for several."),
    backend: str = typer.Option("ort", help="ort (onnxruntime) or trt (TensorRT engines from `edgevoice build`)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto (onnxruntime)."),
    system_prompt: str = typer.Option(None, help="Instructions for the language model, for every conversation."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="Longest reply, in LLM tokens."),
    batch_window_ms: float = typer.Option(None, "--batch-window-ms", min=0, max=50,
                                          help="Batch concurrent conversations' steps (VAD, Whisper decoder, LLM) into "
                                               "shared engine calls, each step waiting at most MS for company (2 is "
                                               "typical). Default: off; on a 2-core CPU it did not make 1-3 conversations "
                                               "reliably faster (BENCHMARKS.md, docs/serve.md)."),
) -> None:
    """Serve conversations over WebSocket (and the kiosk page) from one load of the engines."""
    from edgevoice.serve.server import Server, check_backend

    if device not in ("cpu", "cuda", "auto"):
        raise EdgevoiceError(f"--device {device} is unknown; choose cpu, cuda or auto")
    check_backend(backend, package)  # before anything loads: one line naming what --backend trt lacks here
    max_sessions = session_cap(package, backend, max_sessions)
    console = Console()
    console.print(f"loading {package} ...", highlight=False)
    server = Server(package, host=host, port=port, max_sessions=max_sessions, token=token,
                    insecure_no_token=insecure_no_token, allow_origins=allow_origin or (), device=device,
                    system_prompt=system_prompt, max_new_tokens=max_new_tokens, batch_window_ms=batch_window_ms,
                    backend=backend)
    asyncio.run(_serve_until_signal(server, console))
    console.print("stopped: every conversation was closed (1001)", highlight=False)


DEFAULT_MAX_SESSIONS = 4


def session_cap(package: Path, backend: str, asked: int | None) -> int:
    """``--max-sessions``: what was asked, else the default; with TensorRT never more than the
    conversations the built engines' target holds at once."""
    from edgevoice.manifest import read_manifest

    held = read_manifest(package).sessions_held if backend == "trt" else None
    if held is None:
        return asked or DEFAULT_MAX_SESSIONS
    if held < 1:
        raise EdgevoiceError(f"the engines in {package} leave no memory for a conversation on this target "
                             "(see `edgevoice build`'s summary); export a smaller model or a lower precision")
    if asked is not None and asked > held:
        raise EdgevoiceError(f"--max-sessions {asked} is more than the {held} conversations this target's memory "
                             f"holds with the engines in {package}; give --max-sessions {held} or fewer")
    return asked or min(DEFAULT_MAX_SESSIONS, held)


async def _serve_until_signal(server, console: Console) -> None:
    import threading

    ready = threading.Event()
    task = asyncio.create_task(server.serve(ready))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.stop)
    while not ready.is_set() and not task.done():
        await asyncio.sleep(0.05)
    if ready.is_set():
        _announce(server, console)
    try:
        await task
    except OSError as exc:
        raise EdgevoiceError(f"cannot listen on {server.host}:{server.port} ({exc.strerror}); "
                             "choose another --port or --host") from None


def _announce(server, console: Console) -> None:
    limit = server.conversations.max_sessions
    console.print(f"serving {server.conversations.recipe} conversations, at most {limit} at once", highlight=False)
    console.print(f"  page:   {server.url}", highlight=False)
    console.print(f"  socket: {server.ws_url}", highlight=False)
    console.print(f"  token:  {server.token or '(none: --insecure-no-token, loopback only)'}", highlight=False)
    console.print(f"  client: edgevoice client --url ws://{server.host}:{server.port}"
                  + (f" --token {server.token}" if server.token else "")
                  + " --input QUESTION.wav --output SAID.wav", highlight=False)
    console.print("Ctrl-C stops the server", highlight=False)
