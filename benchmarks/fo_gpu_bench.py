"""Freeze-Omni at its published shapes on a GPU, with seeded random weights, in one process.

What it measures (one JSON, sections that fail alone, written after every section):

* ``build``: encoder (0.34 B), adapter, Qwen2-7B-shaped LLM, speech decoder and codec made on
  the device and cast to the compute dtype; parameter counts and GPU memory.
* ``bandwidth``: device copy bandwidth, for the weight-streaming floor of every step.
* ``steps``: per-step latency (CUDA events, after warm-up), eager and as one CUDA graph, of the
  front end, encoder chunk (160 ms of audio), adapter, LLM listen step, reply prefill, LLM
  decode step, speech-decoder prefix and text prefill, speech-token step and codec windows.
* ``timeline``: respond decision (state 1) -> first text chunk -> speech-decoder prefill ->
  first speech-token chunk -> first PCM, cumulative ms like the paper's latency table, next to
  the paper's 745 ms average on an A100 (``fo_gpu_bench_timeline`` says how each stage is cut).
* ``parity``: the ``tiny`` recipe in float32, torch on the device (graphs off and on) vs
  onnxruntime on the CPU over graphs exported on the spot (``fo_gpu_bench_parity``).
* ``memory``: peak GPU memory while building and while measuring.

On the lent GPU machine (a copy of the working tree; torch with CUDA, onnxruntime CPU), from the
repository root:

    python3 -m pip install -q --no-deps --no-build-isolation -e . ; \\
    timeout 300 python3 benchmarks/fo_gpu_bench.py --device cuda --dims full --out $OUT/fo_gpu_bench.json

Without the editable install everything still imports from the checkout (the exporter is then
loaded from export/to_onnx.py by path); without onnx or onnxscript the parity section (or each
component's export) records the ImportError and the rest runs. The JSON is rewritten after every
section, so a run cut short by the timeout keeps what it finished. Expect about 2 to 3 minutes:
~30 s to build 8 B parameters on the GPU, ~30 s of latency sections, ~1 min of tiny ONNX exports.

CPU smoke test (what tests/test_fo_gpu_bench.py runs):

    python benchmarks/fo_gpu_bench.py --device cpu --dims tiny --quick --out /tmp/fo_gpu_bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helper modules beside this file
sys.path.append(str(HERE.parent))  # the checkout, when the package is not installed (an install wins)

import torch  # noqa: E402
from fo_gpu_bench_device import build_stack, copy_bandwidth, parameter_counts, section  # noqa: E402
from fo_gpu_bench_parity import QUICK_COMPONENTS, tiny_parity  # noqa: E402
from fo_gpu_bench_steps import measure_steps  # noqa: E402
from fo_gpu_bench_timeline import SERVER_FIRST_CHUNK, first_window_tokens, measure_timeline  # noqa: E402

SEGMENTS = (4, 8, 16)  # first text segment sizes (LLM tokens) of the timeline
HEADLINE_SEGMENT = 8  # a short first clause; 4 is the reference's earliest cut
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def environment(device: torch.device) -> dict:
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gb=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
                   sm_count=props.multi_processor_count)
    for name in ("onnx", "onnxscript", "onnxruntime", "triton"):
        try:
            env[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - a missing optional package is a fact to record
            env[name] = f"missing ({type(exc).__name__})"
    return env


def memory_mb(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"skipped": "GPU memory is only tracked on CUDA"}
    return {"allocated_mb": torch.cuda.memory_allocated() / 1e6, "peak_mb": torch.cuda.max_memory_allocated() / 1e6,
            "reserved_mb": torch.cuda.memory_reserved() / 1e6}


class Run:
    """The report, the built modules and the JSON file, saved after every section."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.stack = None
        self.report: dict = {"schema": "edgevoice.fo_gpu_bench/1", "date": time.strftime("%Y-%m-%d %H:%M"),
                             "command": " ".join([Path(sys.executable).name, *sys.argv]),
                             "args": {k: str(v) for k, v in vars(args).items()}}

    def section(self, key: str, work) -> object:
        result = section(self.report, key, work)
        self.save()
        return result

    def save(self) -> None:
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.args.out.with_suffix(".partial")
        partial.write_text(json.dumps(finite(self.report), indent=2, default=str))
        partial.replace(self.args.out)

    def need_stack(self):
        if self.stack is None:
            raise RuntimeError("the modules were not built: see the build section's error")
        return self.stack

    def build(self) -> dict:
        args = self.args
        if args.dims == "full" and self.device.type != "cuda":
            raise RuntimeError("full dims are 8 B parameters: build them on the GPU (--device cuda) only")
        begin = time.perf_counter()
        self.stack = build_stack(args.dims, self.device, DTYPES[args.dtype], args.context, max(args.segments))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        info = {"dims": args.dims, "dtype": args.dtype, "context": args.context, "seconds": time.perf_counter() - begin,
                "parameters": parameter_counts(self.stack), "memory": memory_mb(self.device)}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()  # the measurement peak excludes the float32 build transient
        return info

    def bandwidth(self) -> dict:
        return copy_bandwidth(self.device, 2048 if self.device.type == "cuda" else 64)

    def bandwidth_gbps(self) -> float | None:
        return self.report.get("bandwidth", {}).get("gb_per_s")

    def headline_segment(self) -> int:
        return HEADLINE_SEGMENT if HEADLINE_SEGMENT in self.args.segments else self.args.segments[0]

    def steps(self) -> dict:
        window = first_window_tokens_for(self.need_stack())
        return measure_steps(self.stack, self.headline_segment(), window, self.args.steps, self.args.warmup,
                             self.bandwidth_gbps())

    def timeline(self) -> dict:
        return measure_timeline(self.need_stack(), self.args.segments, self.headline_segment(), self.args.repeats,
                                self.bandwidth_gbps(), published_shapes=self.args.dims == "full")

    def free_stack(self) -> dict:
        self.stack = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return {"freed": True}

    def run(self) -> dict:
        args = self.args
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32 (bf16 runs are unaffected)
        torch.backends.cudnn.allow_tf32 = False
        if self.device.type == "cpu":
            # The CPU run is a smoke test on shared cores: OpenMP threads fighting other processes
            # made single steps 100x slower there; one thread keeps its time predictable.
            torch.set_num_threads(1)
        self.section("environment", lambda: environment(self.device))
        if "latency" in args.sections:
            self.section("build", self.build)
            self.section("bandwidth", self.bandwidth)
            self.section("steps", self.steps)
            self.section("timeline", self.timeline)
            self.section("memory", lambda: memory_mb(self.device))
            self.section("release", self.free_stack)
        if "parity" in args.sections:
            names = QUICK_COMPONENTS if args.quick else None
            self.section("parity", lambda: tiny_parity(args.device, names))
        return self.report


def first_window_tokens_for(stack) -> int:
    from edgevoice.runtime.freeze_omni.speech_tokens import CodecStreamConfig

    return first_window_tokens(CodecStreamConfig(hop=stack.speech.codec.config.hop, first_chunk=SERVER_FIRST_CHUNK))


def finite(value):
    """JSON without NaN/Infinity (an identical output has an infinite SNR)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# --- summary ------------------------------------------------------------------------------------


def _ms(value) -> str:
    return f"{value:8.3f}" if isinstance(value, (int, float)) else f"{'-':>8}"


def steps_table(steps: dict) -> list[str]:
    lines = [f"  {'step':<20}{'eager ms':>10}{'graph ms':>10}{'floor ms':>10}"]
    for name, entry in steps.items():
        if not isinstance(entry, dict) or name in ("setup", "listen_chunk", "seconds"):
            continue
        if "error" in entry:
            lines.append(f"  {name:<20}  error: {entry['error'][:70]}")
            continue
        eager, graphs = entry.get("eager", {}).get("median"), entry.get("graphs", {}).get("median")
        lines.append(f"  {name:<20}  {_ms(eager)}  {_ms(graphs)}  {_ms(entry.get('floor_ms'))}")
    chunk = steps.get("listen_chunk", {})
    lines.append(f"  {'listen chunk (160ms)':<20}  {_ms(chunk.get('eager_ms'))}  {_ms(chunk.get('graphs_ms'))}")
    return lines


def timeline_table(timeline: dict) -> list[str]:
    lines = [f"  {'segment':<12}{'mode':<8}" + "".join(f"{stage[:22]:>25}" for stage in timeline.get("paper", {}).get("stages", []))]
    for mode in ("eager", "graphs"):
        runs = timeline.get(mode, {})
        if "error" in runs or "skipped" in runs:
            lines.append(f"  {mode}: {runs.get('error') or runs.get('skipped')}")
            continue
        for m, row in runs.items():
            if isinstance(row, dict) and "cumulative_ms" in row:
                cells = "".join(f"{v:25.1f}" for v in row["cumulative_ms"].values())
                lines.append(f"  {m + ' tokens':<12}{mode:<8}{cells}")
    head = timeline.get("headline", {})
    lines.append(f"  respond -> first PCM ({head.get('segment_tokens')} tokens): eager {_ms(head.get('eager_ms'))} ms, "
                 f"graphs {_ms(head.get('graphs_ms'))} ms; paper {head.get('paper_ms')} ms (A100)")
    return lines


def summary(report: dict) -> str:
    env = report.get("environment", {})
    lines = [f"fo_gpu_bench {report['date']}: {env.get('gpu') or 'CPU'}, torch {env.get('torch')}"]
    bandwidth = report.get("bandwidth", {})
    if "gb_per_s" in bandwidth:
        lines.append(f"  copy bandwidth {bandwidth['gb_per_s']:.0f} GB/s")
    if isinstance(report.get("steps"), dict) and "error" not in report["steps"]:
        lines += steps_table(report["steps"])
    if isinstance(report.get("timeline"), dict) and "error" not in report["timeline"]:
        lines += timeline_table(report["timeline"])
    parity = report.get("parity", {})
    for name, entry in parity.get("components", {}).items():
        compare = entry.get("compare", {})
        state = "error" if "error" in entry.get("export", {}) or "error" in compare else (
            "ok" if all(compare.get(k, {}).get("ok") for k in ("graphs_off", "graphs_on")) else "MISMATCH")
        lines.append(f"  parity {name}: {state}")
    errors = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    if errors:
        lines.append(f"  sections with errors: {', '.join(errors)}")
    peak = report.get("memory", {}).get("peak_mb")
    if peak:
        lines.append(f"  peak GPU memory while measuring: {peak / 1e3:.1f} GB")
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dims", choices=("full", "tiny"), default="full")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--steps", type=int, default=50, help="timed calls per step latency")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="timed respond -> first PCM runs per segment size")
    parser.add_argument("--context", type=int, default=1024, help="LLM KV cache rows")
    parser.add_argument("--segments", default=",".join(map(str, SEGMENTS)), help="first text segment sizes, tokens")
    parser.add_argument("--sections", default="latency,parity", help="latency and/or parity")
    parser.add_argument("--quick", action="store_true", help="few steps, one segment size, part of the parity")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "fo_gpu_bench.json")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.segments = tuple(int(s) for s in args.segments.split(","))
    args.sections = tuple(args.sections.split(","))
    if args.quick:
        args.steps, args.warmup, args.repeats, args.segments = 3, 1, 2, args.segments[:1]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = Run(args).run()
    print(summary(report))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
