"""`edgevoice export`, `build` and `inspect`: make, complete and describe engine packages."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgevoice.cli.progress import stage_reporter
from edgevoice.manifest import Component, Manifest, read_manifest

console = Console()


def export(
    model: str = typer.Option("silero-vad", help="Model recipe to export: cascade, silero-vad, freeze-omni, tiny, vocalnet, vocalnet-tiny."),
    target: str = typer.Option("cpu", help="Target profile from hw/ (e.g. cpu, jetson-orin, rtx-4090)."),
    out: Path = typer.Option(..., help="Directory to write the engine package to."),
    precision: str = typer.Option(None, help="fp32 (default, exact) or fp16 (GPU targets)."),
    verify: bool = typer.Option(False, help="Check torch vs onnxruntime parity and the upstream model."),
    force: bool = typer.Option(False, help="Export again even if OUT already holds an up-to-date package."),
    voice: str = typer.Option(None, help="Cascade voice: joe (Piper, default) or kokoro (Kokoro-82M, Apache-2.0)."),
    weights: Path = typer.Option(None, help="freeze-omni: Freeze-Omni's checkpoints/ folder (audiollm, decoder, codec); "
                                 "vocalnet: the VocalNet model folder (e.g. checkpoints/VocalNet-1B)."),
    llm: Path = typer.Option(None, help="freeze-omni: the Qwen2 directory it was trained on (config.json, safetensors, tokenizer)."),
    cosyvoice: Path = typer.Option(None, help="vocalnet: the CosyVoice2-0.5B folder (cosyvoice.yaml, flow.pt, hift.pt)."),
    whisper: Path = typer.Option(None, help="vocalnet: the Whisper folder (default: the one its config.json names)."),
) -> None:
    """Export MODEL's components to ONNX and write an engine package for TARGET."""
    from edgevoice.export import export_package

    with stage_reporter() as say:
        manifest = export_package(
            model=model, target=target, out=out, precision=precision, verify=verify, force=force, voice=voice,
            weights=weights, llm=llm, progress=say,
            **({"cosyvoice": cosyvoice} if cosyvoice else {}), **({"whisper": whisper} if whisper else {}),
        )
    console.print(component_table(manifest))
    console.print(op_check_note(manifest), soft_wrap=True)
    budget = manifest.config.get("memory_budget")
    if budget is not None:
        console.print(budget_table(budget))
    if manifest.config.get("published_budget"):
        console.print(published_budget_table(manifest.config["published_budget"]))
    for part, measured in manifest.config.get("upstream", {}).items():
        values = ", ".join(f"{k} {v:.2g}" for k, v in measured.items() if k not in ("against", "limits"))
        console.print(f"{part}: torch port vs {measured['against']}: {values}", soft_wrap=True, highlight=False)
    console.print(f"wrote {manifest.directory} — {next_step(manifest, out)}", soft_wrap=True)


def next_step(manifest: Manifest, out: Path) -> str:
    """What to run next: a CPU package runs as it is, a GPU one needs its engines built on the target."""
    if not manifest.target.get("tensorrt_version"):
        if manifest.recipe == "silero-vad":
            return f"ready for `edgevoice vad AUDIO --package {out}`"
        return f"ready for `edgevoice talk --package {out}`"
    return f"next: `edgevoice build {out}` on the target GPU ({manifest.target.get('name', 'the target')})"


def build(package: Path = typer.Argument(..., help="Engine package directory (from `edgevoice export`).")) -> None:
    """Build TensorRT engines for PACKAGE on this machine's GPU and record them in its manifest."""
    from edgevoice.export import build_package

    with stage_reporter() as say:
        manifest = build_package(package, progress=say)
    console.print(component_table(manifest))


def inspect(
    package: Path = typer.Argument(..., help="Engine package directory."),
    json_output: bool = typer.Option(False, "--json", help="Print the verified manifest as JSON."),
) -> None:
    """Verify PACKAGE (hashes, schema) and describe its components."""
    manifest = read_manifest(package)
    if json_output:
        print(json.dumps(manifest.describe(), indent=2))
        return
    console.print(f"[bold]{manifest.recipe}[/] for {manifest.target['name']} — verified ({len(manifest.files)} files)")
    console.print(component_table(manifest))
    console.print(op_check_note(manifest), soft_wrap=True)


def op_check_note(manifest: Manifest) -> str:
    """What the table's "op check" column is, and is not."""
    versions = sorted({v for c in manifest.components.values() for v in c.trt_check})
    if not versions:
        return "op check: not run"
    return (f"op check vs TensorRT {' and '.join(versions)} ONNX parser support list: a static table "
            "(export/data/trt_onnx_ops.json), not a parse by TensorRT; `edgevoice build` parses the graphs on the target")


def component_table(manifest: Manifest) -> Table:
    table = Table("component", "size", "precision", "parity (max abs)", "op check", "engine")
    table.columns[0].no_wrap = True
    for c in manifest.components.values():
        size = sum(manifest.files[name]["bytes"] for name in (c.onnx, *c.files))
        table.add_row(c.name, f"{size / 1e6:.1f} MB", c.precision, _parity(c), _checks(c), _engine(c))
    return table


def budget_table(budget: dict) -> Table:
    """The export's memory budget: per graph weights and state, then workspace and runtime, then the verdict."""
    from edgevoice.export.budget import budget_lines, format_bytes

    table = Table("memory", "weights", "state (1 session)", title=f"memory budget on {budget['target']} at {budget['precision']}")
    for row in budget_lines(budget):
        table.add_row(*row)
    verdict = "fits" if budget["fits"] else "does not fit"
    table.add_row(f"[bold]needed / available[/] ({verdict})",
                  f"{format_bytes(budget['needed_bytes'])} / {format_bytes(budget['available_bytes'])}", "")
    return table


def published_budget_table(budgets: dict) -> Table:
    """The published model shapes (vocalnet: VocalNet-1B and 8B) against every hw/ profile."""
    from edgevoice.export.budget import format_bytes

    table = Table("model", "target", "needed / available", "fits", title="published shapes (meta tensors) per hw/ profile")
    for model, entry in budgets.items():
        for target, row in entry["targets"].items():
            table.add_row(f"{model} ({entry['precision']})", target,
                          f"{format_bytes(row['needed_bytes'])} / {format_bytes(row['available_bytes'])}",
                          "yes" if row["fits"] else "no")
    return table


def _parity(c: Component) -> str:
    """Torch vs onnxruntime: worst step output, then worst state."""
    if not c.parity:
        return "not run"
    outputs = [v for k, v in c.parity.items() if k not in c.state]
    states = [v for k, v in c.parity.items() if k in c.state]
    lines = [f"out {max(outputs):.1e}"] if outputs else []
    if states:
        lines.append(f"state {max(states):.1e}")
    return "\n".join(lines)


def _checks(c: Component) -> str:
    # "op check vs TensorRT 10.3 ONNX parser support list: OK (51 nodes, 0 warnings)" -> "10.3 OK"
    return "\n".join(f"{v} {'OK' if ': OK' in s else 'FAIL'}" for v, s in c.trt_check.items()) or "not run"


def _engine(c: Component) -> str:
    return f"{c.engine.file}\nTRT {c.engine.tensorrt_version}, sm {c.engine.compute_capability}" if c.engine else "—"
