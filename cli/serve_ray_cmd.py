"""`edgevoice serve-ray`: `edgevoice serve` replicas on a Ray cluster (docs/serve-ray.md).

Deploys the replicas, prints where to connect, then waits; Ctrl-C (or SIGTERM) removes the
deployment (each replica lets its conversations finish for --drain-timeout, then closes them with
1001). With --detach it returns at once and the deployment lives on in the cluster until
`serve shutdown`.
"""

from __future__ import annotations

import secrets
import signal
import threading
from pathlib import Path

import typer
from rich.console import Console

from edgevoice.errors import EdgevoiceError


def serve_ray(
    package: Path = typer.Option(..., help="Engine package; every node of the cluster must have it at this path."),
    replicas: int = typer.Option(2, min=1, help="Replicas (each loads the package once); the least when autoscaling."),
    max_replicas: int = typer.Option(None, "--max-replicas", min=1,
                                     help="Autoscale up to this many replicas with load (default: --replicas, fixed)."),
    max_sessions_per_replica: int = typer.Option(4, min=1, help="Conversations per replica; beyond every replica's "
                                                                "cap new ones are refused with close code 1013."),
    cores_per_replica: float = typer.Option(1.0, help="CPU cores Ray reserves for each replica."),
    num_gpus_per_replica: float = typer.Option(0.0, help="GPUs Ray reserves for each replica (1: one GPU each)."),
    device: str = typer.Option(None, help="cpu, cuda or auto (default: cuda with GPUs per replica, else cpu)."),
    host: str = typer.Option("127.0.0.1", help="Address every node's proxy listens on (0.0.0.0: needs a token)."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port of the page and the /ws socket on every node."),
    token: str = typer.Option(None, help="The token clients must present (?token=T or Authorization: Bearer T); "
                                         "default: a random one, printed below."),
    insecure_no_token: bool = typer.Option(False, "--insecure-no-token",
                                           help="Accept conversations without a token (loopback addresses only)."),
    allow_origin: list[str] = typer.Option(None, "--allow-origin",
                                           help="A page origin besides the server's own that may open conversations; "
                                                "repeat for several."),
    address: str = typer.Option(None, help="Ray cluster to join (`auto`, or HOST:6379 that `ray start --head` "
                                           "printed); default: RAY_ADDRESS, else a Ray local to this machine."),
    drain_timeout: float = typer.Option(120.0, min=0, help="Seconds a stopping replica lets conversations finish."),
    detach: bool = typer.Option(False, "--detach", help="Return once deployed (needs --address); stop it later "
                                                        "with `serve shutdown`."),
    system_prompt: str = typer.Option(None, help="Instructions for the language model, for every conversation."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="Longest reply, in LLM tokens."),
    batch_window_ms: float = typer.Option(None, "--batch-window-ms", min=0, max=50,
                                          help="Batch concurrent conversations' steps in each replica, each waiting at "
                                               "most MS for company (as `edgevoice serve --batch-window-ms`)."),
) -> None:
    """Serve conversations from replicas on a Ray cluster, each a one-load `serve` (Ray Serve)."""
    from edgevoice.serve import ray_app  # without Ray installed: a one-line error naming edgevoice[ray]

    if detach and not address:
        raise EdgevoiceError("--detach needs --address: a Ray local to this command ends with it")
    device = device or ("cuda" if num_gpus_per_replica > 0 else "cpu")
    if device not in ("cpu", "cuda", "auto"):
        raise EdgevoiceError(f"--device {device} is unknown; choose cpu, cuda or auto")
    if token is None and not insecure_no_token:
        token = secrets.token_urlsafe(16)
    options = ray_app.RayServeOptions(
        package=str(package.resolve()), replicas=replicas, max_replicas=max_replicas,
        max_sessions_per_replica=max_sessions_per_replica, cores_per_replica=cores_per_replica,
        gpus_per_replica=num_gpus_per_replica, device=device, host=host, port=port, token=token,
        insecure_no_token=insecure_no_token, allow_origins=tuple(allow_origin or ()), drain_timeout_s=drain_timeout,
        batch_window_ms=batch_window_ms,
        host_options={"system_prompt": system_prompt, "max_new_tokens": max_new_tokens},
    )
    options.validate()
    console = Console()
    console.print(f"deploying {replicas} replica(s) of {package} on Ray ...", highlight=False)
    ray_app.start(options, ray_address=address)
    _announce(options, console)
    if detach:
        return
    _wait_for_signal()
    console.print(f"stopping: conversations may finish for up to {drain_timeout:g} s ...", highlight=False)
    from ray import serve

    serve.shutdown()


def _announce(options, console: Console) -> None:
    netloc = f"[{options.host}]:{options.port}" if ":" in options.host else f"{options.host}:{options.port}"
    query = f"?token={options.token}" if options.token else ""
    scale = (f"{options.replicas} replica(s)" if options.max_replicas in (None, options.replicas)
             else f"{options.replicas} to {options.max_replicas} replicas (autoscaling)")
    console.print(f"serving on Ray: {scale}, at most {options.max_sessions_per_replica} conversations each",
                  highlight=False)
    console.print(f"  page:   http://{netloc}/{query}  (any node of the cluster, same port)", highlight=False)
    console.print(f"  socket: ws://{netloc}/ws", highlight=False)
    console.print(f"  token:  {options.token or '(none: --insecure-no-token, loopback only)'}", highlight=False)
    console.print(f"  health: http://{netloc}/healthz", highlight=False)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    console = Console()
    console.print("Ctrl-C stops the deployment", highlight=False)
    while not stop.wait(1.0):
        pass
