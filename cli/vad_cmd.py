"""`edgevoice vad`: speech segments of an audio file, through an exported VAD package."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from edgevoice.audio.wav import read_audio
from edgevoice.runtime import VadOptions, VadPipeline


def vad(
    audio: Path = typer.Argument(..., help="Mono audio file at the package's sample rate (16 kHz)."),
    package: Path = typer.Option(..., help="Engine package exported with --model silero-vad."),
    backend: str = typer.Option("ort", help="ort (onnxruntime) or trt (TensorRT engines)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    threshold: float = typer.Option(VadOptions.threshold, help="Speech probability that starts speech."),
    min_speech_ms: float = typer.Option(VadOptions.min_speech_ms, help="Drop shorter speech bursts."),
    min_silence_ms: float = typer.Option(VadOptions.min_silence_ms, help="Shorter pauses do not end speech."),
    speech_pad_ms: float = typer.Option(VadOptions.speech_pad_ms, help="Widen each segment by this much."),
    json_output: bool = typer.Option(False, "--json", help="Print segments as JSON."),
) -> None:
    """Print the speech segments of AUDIO."""
    options = _options(threshold, min_speech_ms, min_silence_ms, speech_pad_ms)
    pipeline = VadPipeline(package, backend=backend, device=device)
    samples, rate = read_audio(audio)
    segments = pipeline.segments(samples, rate, options)
    if json_output:
        print(json.dumps([{"start": s.start, "end": s.end} for s in segments]))
        return
    console = Console()
    console.print(f"{audio}: {len(segments)} speech segment(s)")
    for s in segments:
        console.print(f"  speech {s.start:7.2f} s – {s.end:7.2f} s")


def _options(threshold: float, min_speech_ms: float, min_silence_ms: float, speech_pad_ms: float) -> VadOptions:
    from edgevoice.errors import EdgevoiceError

    try:
        return VadOptions(threshold=threshold, min_speech_ms=min_speech_ms,
                          min_silence_ms=min_silence_ms, speech_pad_ms=speech_pad_ms)
    except ValueError as exc:
        raise EdgevoiceError(str(exc)) from exc
