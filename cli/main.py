"""Entry point of the `edgevoice` command.

User errors (EdgevoiceError) print one line on stderr and exit 1, with no traceback; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.text import Text

from edgevoice.cli import eval_cmd, package_cmds, perf_cmds, system_cmds, talk_cmd, vad_cmd
from edgevoice.cli import client_cmd, serve_cmd
from edgevoice.cli import serve_ray_cmd
from edgevoice.errors import EdgevoiceError

app = typer.Typer(
    name="edgevoice",
    help="Export speech models to ONNX/TensorRT engine packages and run them on-device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("export")(package_cmds.export)
app.command("build")(package_cmds.build)
app.command("inspect")(package_cmds.inspect)
app.command("talk")(talk_cmd.talk)
app.command("vad")(vad_cmd.vad)
app.command("doctor")(system_cmds.doctor)
app.command("devices")(system_cmds.devices)
app.command("bench")(perf_cmds.bench)
app.command("plan")(perf_cmds.plan)
app.command("serve")(serve_cmd.serve)
app.command("serve-ray")(serve_ray_cmd.serve_ray)
app.command("client")(client_cmd.client)
app.command("eval")(eval_cmd.eval_)


def main() -> None:
    try:
        app()
    except EdgevoiceError as exc:
        # Text, not markup: messages hold brackets like `edgevoice[audio]` that rich would eat.
        Console(stderr=True).print(Text.assemble(("error:", "bold red"), f" {exc}"), highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
