"""`edgevoice bench` and `edgevoice plan`: measured and predicted cost of a package's components."""

from __future__ import annotations

import json
import shlex
from contextlib import nullcontext
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgevoice.manifest import read_manifest

console = Console()


def bench(
    package: Path = typer.Option(..., help="Engine package directory."),
    backend: str = typer.Option("ort", help="ort, trt or torch (torch rebuilds the modules from the package's recipe)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    steps: int = typer.Option(20, help="Timed steps per component (after the warm-up)."),
    warmup: int = typer.Option(3, help="Untimed steps first."),
    component: list[str] = typer.Option(None, "--component", help="Only this component (repeatable)."),
    turn: bool = typer.Option(True, help="Also time one spoken turn (cascade, ort/trt)."),
    cuda_graphs: bool = typer.Option(True, help="torch/trt on CUDA: replay captured CUDA graphs."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON (schema: docs/bench.md)."),
    record: bool = typer.Option(False, help="Add a dated entry to BENCHMARKS.md in the current directory."),
) -> None:
    """Time every component of PACKAGE step by step, and one spoken turn."""
    from edgevoice.bench import BenchConfig, record as record_entry, run_bench

    config = BenchConfig(backend=backend, device=device, steps=steps, warmup=warmup, cuda_graphs=cuda_graphs,
                         components=tuple(component) if component else None, turn=turn)
    manifest = read_manifest(package)
    command = shlex.join(["edgevoice", *sys.argv[1:]])
    with console.status("benchmarking", spinner="dots") if not json_output else nullcontext():
        result = run_bench(manifest, config, command=command)
    if record:
        record_entry(result, Path("BENCHMARKS.md"))
    if json_output:
        print(json.dumps(result, indent=2))
        return
    console.print(bench_table(result))
    turn_result = result.get("turn")
    if turn_result:
        if turn_result.get("error"):
            console.print(f"turn: {turn_result['error']}")
        else:
            stages = ", ".join(f"{k} {v:.2f} s" for k, v in turn_result["latency_s"].items())
            console.print(f"turn ({turn_result['transcript']!r} -> {turn_result['reply']!r}): {stages}")


def bench_table(result: dict) -> Table:
    table = Table("component", "median ms", "p90 ms", "RTF", "tokens/s", "RSS MB", "GPU MB",
                  title=f"{result['recipe']} on {result['backend']}/{result['device']}")
    for c in result["components"]:
        if c.get("error"):
            table.add_row(c["name"], f"[yellow]{c['error']}[/]", "", "", "", "", "")
            continue
        lat = c["latency_ms"]
        table.add_row(c["name"], f"{lat['median']:.2f}", f"{lat['p90']:.2f}", _fmt(c["rtf"], ".3f"),
                      _fmt(c["tokens_per_s"], ".1f"), f"{c['host_rss_mb']:.0f}", _fmt(c["gpu_peak_mb"], ".0f"))
    return table


def plan(
    package: Path = typer.Option(..., help="Engine package directory."),
    target: str = typer.Option(..., help="Target profile from hw/ (e.g. jetson-orin-nano, h100, cpu)."),
    json_output: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Roofline plan of PACKAGE on TARGET: bytes, FLOPs and the lower bound of each step."""
    from edgevoice.plan import plan_package
    from edgevoice.targets import load_target

    result = plan_package(read_manifest(package), load_target(target))
    if json_output:
        print(json.dumps(result.to_dict(), indent=2))
        return
    table = Table("component", "params MB", "state MB", "GFLOP/step", "bound", "lower bound ms",
                  title=f"{Path(result.package).name} on {result.target}")
    for c in result.components:
        flops = f"{c.flops / 1e9:.3g}" + (f" (partial: {c.unresolved_ops} ops unresolved)" if c.flops_partial else "")
        table.add_row(c.name, f"{c.param_bytes / 1e6:.1f}", f"{c.state_bytes / 1e6:.1f}", flops, c.bound,
                      f"{c.lower_bound_s * 1e3:.3g}")
    console.print(table)
    memory = result.memory
    verdict = "fits" if memory["fits"] else "[red]does not fit[/]"
    console.print(f"memory: {memory['needed_bytes'] / 1e9:.2f} GB needed of {memory['available_bytes'] / 1e9:.1f} GB "
                  f"({verdict}; runtime's own use {memory['runtime_bytes'] / 1e9:.1f} GB assumed)")
    if result.turn:
        console.print(f"end of speech -> first audio: at least {result.turn['first_audio_s'] * 1e3:.1f} ms "
                      f"({result.turn['note']}; assumptions: --json)")


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)
