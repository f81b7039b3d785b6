"""Tiny-recipe parity: every Freeze-Omni component through torch on the device vs onnxruntime on the CPU.

The ``tiny`` widths (``TINY_LISTEN``, ``TINY_SPEECH``) are built in float32, each component is
exported with the project's exporter (``edgevoice.export.to_onnx.export_onnx``), and the
recipe's own parity feeds are streamed, state fed back, through onnxruntime (CPU, the
reference) and through ``TorchRunner`` on the device with CUDA graphs off and on. Every step
output and the final state are compared.

Tolerance per component: the recipe's float32 (atol, rtol), with rtol at least 1e-4 of the
reference's max |value|: both sides are float32 (TF32 off), so only summation order differs.

Needs onnx and onnxscript for the export and onnxruntime for the reference; where one is
missing the section (or the component) records the ImportError and the rest of the run goes on.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
from fo_gpu_bench_device import section

REPO = Path(__file__).resolve().parents[1]
RTOL_FLOOR = 1e-4
QUICK_COMPONENTS = ("fo_llm_decode", "speech_token", "codec")  # the CPU smoke test's share
ORT_THREADS = min(4, os.cpu_count() or 1)


def tiny_components() -> list:
    from edgevoice.recipes.freeze_omni.listen import TINY_LISTEN, listen_components, random_listen
    from edgevoice.recipes.freeze_omni.speech import TINY_SPEECH, random_speech, speech_components

    listen = random_listen(TINY_LISTEN, seed=0)
    speech = random_speech(TINY_SPEECH, seed=0, max_prefix_rows=64, max_text_rows=64, max_speech_tokens=128)
    return listen_components(listen) + speech_components(speech)


def stream_steps(stream, feeds: list[dict[str, np.ndarray]]) -> tuple[dict, dict]:
    """Step outputs stacked over the feeds, and the final state."""
    outputs = [stream(feed) for feed in feeds]
    stacked = {name: np.stack([o[name] for o in outputs]) for name in outputs[0]}
    return stacked, stream.snapshot()


def compare_component(component, entry, onnx_path: Path, device: str) -> dict:
    from edgevoice.backends.ort import OrtRunner
    from edgevoice.backends.torch import TorchOptions, TorchRunner
    from edgevoice.compare import compare_outputs

    feeds = component.parity_feeds()
    reference = stream_steps(OrtRunner(entry, onnx_path, threads=ORT_THREADS).stream(1), feeds)
    atol, rtol = component.parity_tolerance["fp32"]
    tolerance = {"atol": atol, "rtol": max(rtol, RTOL_FLOOR)}
    result: dict = {"steps": len(feeds), "tolerance": tolerance}
    for label, graphs in (("graphs_off", False), ("graphs_on", True)):
        runner = TorchRunner(entry, component.module, TorchOptions(device=device, cuda_graphs=graphs))
        stream = runner.stream(1)
        outputs, state = stream_steps(stream, feeds)
        steps = compare_outputs(reference[0], outputs, **tolerance)
        final = compare_outputs(reference[1], state, **tolerance)
        result[label] = {"ok": steps.ok and final.ok, "graphs_captured": stream.captured_shapes,
                         "outputs": steps.to_dict(), "final_state": final.to_dict()}
    return result


def exporter():
    """``edgevoice.export.to_onnx``, or the same file by path when the package is not installed.

    export/ only becomes ``edgevoice.export`` through the install's package mapping; the module
    itself imports nothing but the core package, onnx and torch.
    """
    try:
        from edgevoice.export import to_onnx
    except ModuleNotFoundError as exc:
        if exc.name not in ("edgevoice.export", "edgevoice.export.to_onnx"):
            raise  # onnx itself is missing: that is the error to record
        spec = importlib.util.spec_from_file_location("fo_bench_to_onnx", REPO / "export" / "to_onnx.py")
        to_onnx = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(to_onnx)
    return to_onnx


def export_component(component, workdir: Path):
    to_onnx = exporter()
    path = workdir / f"{component.name}.onnx"
    return to_onnx.export_onnx(to_onnx.with_precision(component, "fp32"), path, "fp32", 1), path


def tiny_parity(device: str, names: tuple[str, ...] | None) -> dict:
    """{component: {export, compare: {tolerance, graphs_off, graphs_on}}, all_ok}."""
    import torch

    # fp32 means fp32: TF32 matmuls and convolutions would move the device side off the reference.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    components = [c for c in tiny_components() if names is None or c.name in names]
    workdir = Path(tempfile.mkdtemp(prefix="fo-parity-"))
    results: dict = {"device": device, "components": {}}
    exported = {}
    for component in components:  # all exports first: the torch runners move the shared modules to the device
        entry: dict = {}
        exported[component.name] = section(entry, "export", lambda: export_component(component, workdir))
        if exported[component.name] is not None:
            entry["export"] = {"onnx": exported[component.name][1].name}
        results["components"][component.name] = entry
    for component in components:
        if exported[component.name] is not None:
            graph, path = exported[component.name]
            section(results["components"][component.name], "compare",
                    lambda: compare_component(component, graph, path, device))
    results["all_ok"] = all(_ok(entry) for entry in results["components"].values())
    return results


def _ok(entry: dict) -> bool:
    compare = entry.get("compare", {})
    return all(compare.get(label, {}).get("ok") for label in ("graphs_off", "graphs_on"))
