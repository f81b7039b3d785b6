"""GPU check of the torch fast path, in one run: parity, eager vs CUDA-graph latency, plan vs measured.

For every cascade component that has a torch module:

1. parity: the same synthetic steps through onnxruntime on the CPU (the reference), then the
   torch runner with CUDA graphs off and on; step outputs at every step and the final state are
   compared within the stated tolerances (fp32: atol 1e-3 + rtol 1e-3 of the reference's max).
2. latency: eager vs CUDA-graph step time, CUDA events, after warm-up.
3. plan: the roofline lower bound on the target profile (default h100) next to the measured
   CUDA-graph median, as measured / predicted.

Every section runs in its own try/except and records its error in the JSON, so one failure
keeps the rest. Writes $OUT/gpu_suite.json (or --out) and prints a short summary.

Components come from the package (``--source package``, default: its ONNX files and the torch
modules its recipe rebuilds from the installed weight packages), or, where those cannot travel,
from the cascade's architectures with seeded random weights exported to ONNX on the spot
(``--source random``: the same shapes and kernels, so latency and parity mean the same).

    python benchmarks/gpu_suite.py --package engines/cpu                      # on the GPU machine
    python benchmarks/gpu_suite.py --package engines/cpu --device cpu --quick # CPU smoke test

On CUDA it also runs ``benchmarks/vocalnet_gpu_bench.py`` at VocalNet-1B's published shapes in a
child process (``--vocalnet 1b|tiny|off``; off by default on the CPU) and keeps its timeline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FP32_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}
FP16_TOLERANCE = {"atol": 5e-2, "rtol": 2e-2}


def section(report: dict, key: str, work) -> object:
    """Run ``work()``; keep its result under ``key``, or its error, and never raise."""
    started = time.perf_counter()
    try:
        report[key] = work()
        return report[key]
    except Exception as exc:  # noqa: BLE001 - a failed section is recorded and the suite goes on
        report[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=4)}
        return None
    finally:
        report.setdefault("seconds", {})[key] = round(time.perf_counter() - started, 2)


def stream_steps(stream, feeds, steps: int) -> tuple[dict, dict]:
    """Step outputs stacked over ``steps`` steps, and the final state."""
    outputs = [stream(feeds(i)) for i in range(steps)]
    stacked = {name: np.stack([o[name] for o in outputs]) for name in outputs[0]}
    return stacked, stream.snapshot()


def parity(manifest, name: str, module, device: str, steps: int) -> dict:
    from edgevoice.backends.ort import OrtRunner
    from edgevoice.backends.torch import TorchOptions, TorchRunner
    from edgevoice.bench import step_feeds
    from edgevoice.compare import compare_outputs

    component = manifest.component(name)
    feeds = step_feeds(component, np.random.default_rng(0))
    reference = stream_steps(OrtRunner(component, manifest.path(component.onnx)).stream(1), feeds, steps)
    tolerance = FP16_TOLERANCE if component.precision == "fp16" else FP32_TOLERANCE
    result = {"steps": steps, "tolerance": tolerance}
    for label, graphs in (("graphs_off", False), ("graphs_on", True)):
        runner = TorchRunner(component, module, TorchOptions(device=device, cuda_graphs=graphs))
        outputs, state = stream_steps(runner.stream(1), feeds, steps)
        step_cmp = compare_outputs(reference[0], outputs, **tolerance)
        state_cmp = compare_outputs(reference[1], state, **tolerance) if state else None
        result[label] = {"ok": step_cmp.ok and (state_cmp is None or state_cmp.ok),
                         "outputs": step_cmp.to_dict(), "final_state": state_cmp.to_dict() if state_cmp else None}
    return result


def latency(manifest, name: str, module, device: str, steps: int, warmup: int) -> dict:
    from edgevoice.bench import BenchConfig, bench_component

    result = {}
    for label, graphs in (("eager", False), ("graphs", True)):
        config = BenchConfig(backend="torch", device=device, steps=steps, warmup=warmup, cuda_graphs=graphs, turn=False)
        measured = bench_component(manifest, name, config, module=module)
        result[label] = {k: measured[k] for k in ("latency_ms", "timer", "gpu_peak_mb", "rtf", "tokens_per_s")}
    result["graph_speedup"] = result["eager"]["latency_ms"]["median"] / result["graphs"]["latency_ms"]["median"]
    return result


def plan_vs_measured(manifest, names: list[str], target: str, measured: dict) -> dict:
    from edgevoice.plan import plan_package
    from edgevoice.targets import load_target

    plan = plan_package(manifest, load_target(target), components=names)
    rows = {}
    for c in plan.components:
        graphs = measured.get(c.name, {}).get("graphs", {}) if isinstance(measured.get(c.name), dict) else {}
        median_ms = graphs.get("latency_ms", {}).get("median")
        predicted_ms = c.lower_bound_s * 1e3
        rows[c.name] = {"predicted_ms": predicted_ms, "bound": c.bound, "flops_partial": c.flops_partial,
                        "measured_ms": median_ms,
                        "measured_over_predicted": median_ms / predicted_ms if median_ms and predicted_ms else None}
    return {"target": target, "components": rows, "memory": plan.memory}


def package_source(package: Path, names: list[str] | None):
    from edgevoice.bench import torch_module
    from edgevoice.manifest import read_manifest

    manifest = read_manifest(package)
    torch_names = names or list(manifest.components)  # the voice (an imported graph) records why it has no module
    return manifest, {n: (lambda n=n: torch_module(manifest, n)) for n in torch_names}


def random_source(workdir: Path, names: list[str] | None, quick: bool):
    """The cascade's architectures with seeded random weights, exported to ONNX in ``workdir``."""
    import torch
    from edgevoice.export.to_onnx import export_onnx

    from edgevoice.manifest import SCHEMA_VERSION, Manifest
    from edgevoice.models.llm import LlmConfig, LlmModel, LlmStep
    from edgevoice.models.vad import SileroVad, VadConfig
    from edgevoice.models.whisper.model import Whisper, WhisperDecoderStep, WhisperEncoderStep
    from edgevoice.recipes.base import RecipeComponent

    torch.manual_seed(0)
    whisper, llm = Whisper().eval(), LlmModel(LlmConfig()).eval()
    c, lc = whisper.config, llm.config
    built = {
        "vad": (SileroVad(VadConfig()).eval(), {"sample_rate": 16000, "chunk_samples": 512}),
        "asr_encoder": (WhisperEncoderStep(whisper), {"sample_rate": c.sample_rate, "window_samples": c.window_samples}),
        "asr_decoder": (WhisperDecoderStep(whisper), {"vocab_size": c.n_vocab, "max_length": c.n_text_ctx}),
        "llm_prefill": (LlmStep(llm, tokens=None), {"vocab_size": lc.vocab_size, "max_context": lc.max_context}),
        "llm_decode": (LlmStep(llm, tokens=1), {"vocab_size": lc.vocab_size, "max_context": lc.max_context}),
    }
    chosen = names or (["vad", "llm_decode"] if quick else list(built))
    entries = {}
    for name in chosen:
        module, facts = built[name]
        entry = export_onnx(RecipeComponent(name, module, facts, "random weights"), workdir / f"{name}.onnx", "fp32", 1)
        entries[name] = entry
    manifest = Manifest(schema_version=SCHEMA_VERSION, edgevoice_version="gpu-suite", recipe="cascade", config={},
                        target={"name": "none"}, export_command="benchmarks/gpu_suite.py --source random",
                        components=entries, files={}, directory=workdir)
    return manifest, {n: (lambda n=n: built[n][0]) for n in chosen}


def vocalnet_bench(args, out_dir: Path) -> dict:
    """benchmarks/vocalnet_gpu_bench.py in a child process (its GPU memory freed on exit); its timeline and rates."""
    import subprocess

    out = out_dir / "vocalnet_gpu_bench.json"
    command = [sys.executable, str(REPO / "benchmarks" / "vocalnet_gpu_bench.py"), "--device", args.device,
               "--shapes", args.vocalnet, "--out", str(out)] + (["--steps", "2"] if args.quick else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=480, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-1500:]}")
    report = json.loads(out.read_text())
    first_pcm = {m: report["timeline"].get(m, {}).get("cumulative_ms", {}).get("first_pcm") for m in ("eager", "graphs")}
    return {"json": str(out), "shapes": args.vocalnet, "timeline": report["timeline"], "rates": report.get("rates"),
            "first_pcm_ms": first_pcm, "paper_first_pcm_ms": report["paper"]["first_pcm_ms"]}


def environment(device: str) -> dict:
    import torch

    from edgevoice.bench import environment as base

    env = base()
    env["torch_cuda"] = torch.version.cuda
    env["gpu"] = torch.cuda.get_device_name(0) if device == "cuda" else None
    return env


def run(args) -> dict:
    import torch

    # fp32 means fp32 here: TF32 convolutions would move the torch side away from the CPU reference.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    report: dict = {"schema": "edgevoice.gpu_suite/1", "date": time.strftime("%Y-%m-%d %H:%M"),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args), "components": {}}
    section(report, "environment", lambda: environment(args.device))
    workdir = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    if getattr(args, "vocalnet", "off") != "off":
        section(report, "vocalnet", lambda: vocalnet_bench(args, args.out.parent))
    source = section(report, "source", lambda: (
        package_source(args.package, args.component) if args.source == "package"
        else random_source(workdir, args.component, args.quick)))
    if not isinstance(source, tuple):
        return report
    manifest, modules = source
    report["source"] = {"kind": args.source, "components": list(modules)}
    measured = {}
    for name, build in modules.items():
        entry: dict = {}
        module = section(entry, "module", build)
        if module is not None:
            entry.pop("module")
            section(entry, "parity", lambda: parity(manifest, name, module, args.device, args.parity_steps))
            measured[name] = section(entry, "latency", lambda: latency(manifest, name, module, args.device,
                                                                     args.steps, args.warmup))
        report["components"][name] = entry
    section(report, "plan", lambda: plan_vs_measured(manifest, list(modules), args.target, measured))
    return report


def summary(report: dict) -> str:
    lines = [f"gpu_suite {report['date']}: {report.get('environment', {}).get('gpu') or 'no GPU'}"]
    plan = report.get("plan", {}).get("components", {}) if isinstance(report.get("plan"), dict) else {}
    for name, entry in report["components"].items():
        par = entry.get("parity", {})
        lat = entry.get("latency", {})
        ok = "error" if "error" in par else ("ok" if all(par.get(k, {}).get("ok") for k in ("graphs_off", "graphs_on")) else "MISMATCH")
        if "error" in lat or not lat:
            timing = lat.get("error", "not run")
        else:
            timing = (f"eager {lat['eager']['latency_ms']['median']:.3f} ms, graphs {lat['graphs']['latency_ms']['median']:.3f} ms "
                      f"(x{lat['graph_speedup']:.1f})")
        ratio = plan.get(name, {}).get("measured_over_predicted")
        lines.append(f"  {name}: parity {ok}; {timing}; measured/predicted {ratio:.1f}" if ratio else
                     f"  {name}: parity {ok}; {timing}")
    vocalnet = report.get("vocalnet", {})
    if "first_pcm_ms" in vocalnet:
        lines.append(f"  vocalnet {vocalnet['shapes']}: end of turn -> first PCM {vocalnet['first_pcm_ms']} ms "
                     f"(paper: {vocalnet['paper_first_pcm_ms']} ms on an L20)")
    errors = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    if errors:
        lines.append(f"  sections with errors: {', '.join(errors)}")
    return "\n".join(lines)


def finite(value):
    """JSON without NaN/Infinity (an identical output has an infinite SNR)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=REPO / "engines" / "cpu")
    parser.add_argument("--source", choices=("package", "random"), default="package")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--component", action="append", help="only this component (repeatable)")
    parser.add_argument("--target", default="h100", help="target profile for the plan")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--parity-steps", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke test)")
    parser.add_argument("--vocalnet", choices=("1b", "tiny", "off"), default=None,
                        help="run benchmarks/vocalnet_gpu_bench.py at these shapes (default: 1b on cuda, off on cpu)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_suite.json")
    args = parser.parse_args(argv)
    args.vocalnet = args.vocalnet or ("1b" if args.device == "cuda" else "off")
    if args.quick:
        args.steps, args.warmup, args.parity_steps = 3, 2, 2
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(finite(report), indent=2, default=str))
    print(summary(report))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
