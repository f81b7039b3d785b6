"""`edgevoice talk`: a spoken turn with a cascade package (file mode: --input/--output)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgevoice.audio.wav import read_audio, write_audio
from edgevoice.errors import EdgevoiceError


def talk(
    package: Path = typer.Option(..., help="Engine package exported with --model cascade."),
    input: Path = typer.Option(None, help="A WAV with the user's question (16 kHz mono)."),
    output: Path = typer.Option(None, help="Where to write the spoken reply (WAV)."),
    backend: str = typer.Option("ort", help="ort (onnxruntime) or trt (TensorRT engines)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    system_prompt: str = typer.Option(None, help="Instructions for the language model."),
    max_new_tokens: int = typer.Option(64, help="Longest reply, in tokens."),
    seed: int = typer.Option(0, help="Seed for sampling and the voice's noise."),
    json_output: bool = typer.Option(False, "--json", help="Print the turn as JSON."),
) -> None:
    """Answer the spoken question in INPUT and write the spoken reply to OUTPUT."""
    from edgevoice.runtime.pipelines.cascade import DEFAULT_SYSTEM_PROMPT, CascadePipeline

    if input is None or output is None:
        raise EdgevoiceError("give --input QUESTION.wav and --output REPLY.wav (live microphone mode is not available yet)")
    samples, rate = read_audio(input)
    pipeline = CascadePipeline(package, backend=backend, device=device, max_new_tokens=max_new_tokens,
                               system_prompt=system_prompt or DEFAULT_SYSTEM_PROMPT, seed=seed)
    turn = pipeline.respond(samples, rate)
    _write_reply(output, turn.audio, turn.sample_rate)
    if json_output:
        print(json.dumps({"transcript": turn.transcript, "reply": turn.reply, "output": str(output),
                          "reply_seconds": len(turn.audio) / turn.sample_rate, "latency_s": turn.latency,
                          "notes": list(turn.notes)}, indent=2))
        return
    console = Console()
    console.print(f"[bold]you:[/] {turn.transcript or '—'}", highlight=False)
    console.print(f"[bold]agent:[/] {turn.reply or '—'}", highlight=False)
    for note in turn.notes:
        console.print(f"note: {note}", highlight=False)
    table = Table("stage", "seconds")
    for stage, seconds in turn.latency.items():
        table.add_row(stage, f"{seconds:.3f}")
    console.print(table)
    console.print(f"wrote {output} ({len(turn.audio) / turn.sample_rate:.1f} s of audio)")


def _write_reply(path: Path, audio, sample_rate: int) -> None:
    try:
        write_audio(path, audio, sample_rate)
    except OSError as exc:
        raise EdgevoiceError(f"cannot write {path} ({exc.strerror}); choose another --output") from exc
