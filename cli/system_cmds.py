"""`edgevoice doctor` and `edgevoice devices`: what this machine offers."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgevoice.audio.devices import list_devices
from edgevoice.system import system_report


def doctor(json_output: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Check Python, torch, onnxruntime, CUDA, TensorRT and audio devices."""
    report = system_report()
    if json_output:
        print(json.dumps(report, indent=2))
        return
    ort = report["onnxruntime"]
    audio = report["audio"]
    rows = [
        ("edgevoice", report["edgevoice"], ""),
        ("Python", report["python"], report["platform"]),
        ("torch", report["torch"] or "not installed", escape("export only: pip install 'edgevoice[export]'")),
        ("onnx", report["onnx"] or "not installed", "export only"),
        ("onnxruntime", ort["version"] or "not installed", ", ".join(ort["providers"])),
        ("CUDA GPUs", str(report["cuda_devices"]), f"compute capability {report['compute_capability']}" if report["cuda_devices"] else ""),
        ("TensorRT", report["tensorrt"] or "not installed", "needed by `edgevoice build`"),
        ("audio devices", f"{audio['inputs']} in / {audio['outputs']} out" if audio["available"] else "unavailable", audio["detail"]),
        ("espeak-ng", "found" if report["espeak_ng"] else "not found", report["espeak_ng"] or "needed by TTS voices"),
    ]
    table = Table("component", "status", "detail")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def devices(json_output: bool = typer.Option(False, "--json", help="Print devices as JSON.")) -> None:
    """List audio input and output devices."""
    found = list_devices()
    if json_output:
        print(json.dumps(found, indent=2))
        return
    if not found:
        Console().print("no audio devices found (PortAudio sees none); check `arecord -l` / `aplay -l`")
        return
    table = Table("index", "name", "host API", "in", "out", "rate")
    for d in found:
        defaults = [word for word, key in (("in", "default_input"), ("out", "default_output")) if d[key]]
        mark = f" (default {'/'.join(defaults)})" if defaults else ""
        table.add_row(str(d["index"]), d["name"] + mark, d["hostapi"], str(d["max_input_channels"]),
                      str(d["max_output_channels"]), f"{d['default_samplerate']:.0f}")
    Console().print(table)
