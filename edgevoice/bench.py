"""`edgevoice bench`: per-component step latency, throughput and memory, and one spoken turn.

Each component streams ``steps`` steps of synthetic feeds at its typical (opt) dims through one
backend, after ``warmup`` steps that are not timed. On the CPU a step is timed with
``perf_counter``; on CUDA with CUDA events around the step (torch backend). The turn runs the
cascade's runtime pipeline (engines only: ort or trt) on a recorded question after one untimed
turn. The JSON it returns is described in docs/bench.md.

The torch backend needs the components' torch modules: ``torch_module`` rebuilds them with the
recipe the package names (so this module may import recipes; the runtime never does).
"""

from __future__ import annotations

import functools
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component, Manifest

SCHEMA = "edgevoice.bench/1"
QUESTION_WAV = Path(__file__).resolve().parent.parent / "examples" / "question.wav"
# Components that emit tokens (llm_prefill/llm_decode: the LLM of packages made before its one graph).
DECODERS = ("asr_decoder", "llm", "llm_prefill", "llm_decode")


@dataclass(frozen=True)
class BenchConfig:
    backend: str = "ort"  # ort | trt | torch
    device: str = "cpu"  # cpu | cuda
    steps: int = 20  # timed steps per component
    warmup: int = 3  # untimed steps first (allocations, graph capture, caches)
    cuda_graphs: bool = True  # torch/trt on CUDA: replay captured graphs
    components: tuple[str, ...] | None = None  # None: every component
    turn: bool = True  # also time one spoken turn (cascade packages, ort/trt backends)
    seed: int = 0

    def __post_init__(self) -> None:
        from edgevoice.backends import BACKENDS

        if self.backend not in BACKENDS:
            raise EdgevoiceError(f"unknown backend '{self.backend}'; choose one of: {', '.join(BACKENDS)}")
        if self.device not in ("cpu", "cuda"):
            raise EdgevoiceError(f"unknown device '{self.device}'; choose cpu or cuda")
        if self.steps < 1 or self.warmup < 0:
            raise EdgevoiceError(f"--steps must be at least 1 (got {self.steps}) and warm-up at least 0")


def recipe_options(manifest: Manifest) -> dict[str, Any]:
    """The options that rebuild the recipe the package was exported from."""
    if manifest.recipe != "cascade":
        return {}
    options: dict[str, Any] = {"voice": manifest.config.get("voice", "joe")}
    llm = next((n for n in ("llm", "llm_decode") if n in manifest.components), None)
    if llm is not None:
        options["max_context"] = manifest.components[llm].stream["max_context"]
    return options


@functools.lru_cache(maxsize=2)
def _recipe_modules(recipe: str, options: tuple) -> dict[str, Any]:
    from edgevoice.recipes import load_recipe

    return {c.name: c.module for c in load_recipe(recipe, **dict(options)).components}


def torch_module(manifest: Manifest, name: str):
    """``name``'s torch StreamingModule, rebuilt from the package's recipe at the package precision."""
    import torch

    modules = _recipe_modules(manifest.recipe, tuple(sorted(recipe_options(manifest).items())))
    if name not in modules:
        raise EdgevoiceError(f"{name} is an imported graph with no torch module; bench it with --backend ort")
    module = modules[name]
    if manifest.component(name).precision == "fp16":
        import copy

        module = copy.deepcopy(module).set_compute_dtype(torch.float16)
    return module


def open_bench_runner(manifest: Manifest, name: str, config: BenchConfig, module=None):
    """A runner for ``name``; the torch backend uses ``module`` or else rebuilds it from the recipe."""
    from edgevoice.backends import open_runner

    if config.backend == "torch" and module is None:
        module = torch_module(manifest, name)
    return open_runner(manifest, name, config.backend, config.device, module=module, cuda_graphs=config.cuda_graphs)


def step_feeds(component: Component, rng: np.random.Generator) -> Callable[[int], dict[str, np.ndarray]]:
    """Feeds for step i at the opt dims: noise for audio/features, valid ids, positions that advance."""
    dims = {name: r.opt for name, r in component.dynamic_dims.items()}
    state = set(component.state_inputs)
    specs = [s for s in component.inputs if s.name not in state]
    shapes = {s.name: tuple(dims.get(d, 1) if isinstance(d, str) else d for d in s.shape) for s in specs}
    vocab = int(component.stream.get("vocab_size") or component.stream.get("num_symbols") or 100)
    fixed = {s.name: _fixed_value(component, s.name, shapes[s.name], s.dtype, vocab, rng)
             for s in specs if not _is_position(s.name)}
    per_step = _tokens_per_step(shapes)
    limit = int(component.stream.get("max_context") or component.stream.get("max_length") or 1 << 30)

    def feeds(i: int) -> dict[str, np.ndarray]:
        out = dict(fixed)
        for s in specs:
            if _is_position(s.name):
                start = (i * per_step) % max(limit - per_step, 1)  # wrap before the cache ends
                out[s.name] = np.full(shapes[s.name], start, dtype=s.dtype)
        return out

    return feeds


def _is_position(name: str) -> bool:
    return name in ("position", "offset")


def _tokens_per_step(shapes: Mapping[str, tuple]) -> int:
    for name in ("input_ids", "tokens"):
        if name in shapes:
            return int(shapes[name][-1])
    return 0


def _fixed_value(component: Component, name: str, shape: tuple, dtype: str, vocab: int, rng) -> np.ndarray:
    if name == "scales" and "scales" in component.stream:
        return np.asarray(component.stream["scales"], dtype=dtype)
    if np.dtype(dtype).kind == "f":
        return (0.1 * rng.standard_normal(shape)).astype(dtype)
    if "length" in name:  # the valid length of the sequence input it belongs to (its last dim)
        full = max((s for s in _sequence_lengths(component)), default=1)
        return np.full(shape, full, dtype=dtype)
    return rng.integers(0, vocab, size=shape).astype(dtype)


def _sequence_lengths(component: Component) -> list[int]:
    dims = {name: r.opt for name, r in component.dynamic_dims.items()}
    lengths = []
    for spec in component.inputs:
        last = spec.shape[-1] if spec.shape else 1
        if len(spec.shape) == 2 and spec.name not in component.state_inputs:
            lengths.append(dims.get(last, 1) if isinstance(last, str) else int(last))
    return lengths


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unknown)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


class _Timer:
    """Wall clock on the CPU; CUDA events on the current torch stream when the runner is on CUDA."""

    def __init__(self, cuda: bool):
        self.torch = None
        if cuda:
            import torch

            self.torch = torch
        self.kind = "cuda_events" if cuda else "perf_counter"

    def time(self, call: Callable[[], Any]) -> float:
        if self.torch is None:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start
        begin, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3


def bench_component(manifest: Manifest, name: str, config: BenchConfig, module=None) -> dict[str, Any]:
    component = manifest.component(name)
    before = rss_bytes()
    runner = open_bench_runner(manifest, name, config, module)
    stream = runner.stream(1)
    feeds = step_feeds(component, np.random.default_rng(config.seed))
    cuda = config.device == "cuda" and config.backend == "torch"
    timer = _Timer(cuda)
    if cuda:
        timer.torch.cuda.reset_peak_memory_stats()
    outputs: dict[str, np.ndarray] = {}
    for i in range(config.warmup):
        outputs = stream(feeds(i))
    seconds = []
    for i in range(config.warmup, config.warmup + config.steps):
        seconds.append(timer.time(lambda i=i: outputs.update(stream(feeds(i)))))
    return {
        "name": name, "backend": config.backend, "device": config.device, "timer": timer.kind,
        "feeds": {k: list(v.shape) for k, v in feeds(0).items()}, "steps": config.steps, "warmup": config.warmup,
        "latency_ms": _latency_ms(seconds), **_throughput(component, feeds(0), outputs, statistics.median(seconds)),
        "host_rss_mb": rss_bytes() / 1e6, "host_rss_delta_mb": (rss_bytes() - before) / 1e6,
        "gpu_peak_mb": timer.torch.cuda.max_memory_allocated() / 1e6 if cuda else None, "error": None,
    }


def _latency_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "min": float(ms.min()),
            "mean": float(ms.mean())}


def _throughput(component: Component, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                median_s: float) -> dict[str, Any]:
    """Real-time factor (step time / audio seconds) for audio components, tokens/s for decoders."""
    audio_s = _audio_seconds(component, feeds, outputs)
    tokens = _tokens_per_step({k: v.shape for k, v in feeds.items()}) if component.name in DECODERS else 0
    return {
        "audio_seconds_per_step": audio_s, "rtf": median_s / audio_s if audio_s else None,
        "tokens_per_step": tokens or None, "tokens_per_s": tokens / median_s if tokens else None,
    }


def _audio_seconds(component: Component, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> float | None:
    stream = component.stream
    rate = stream.get("sample_rate")
    if not rate:
        return None
    if "chunk_samples" in stream:  # VAD: one chunk in
        return stream["chunk_samples"] / rate
    if "window_samples" in stream:  # Whisper encoder: the whole window is computed every call
        return stream["window_samples"] / rate
    if component.outputs and outputs:  # a voice: the samples it produced
        produced = outputs.get(component.outputs[0].name)
        return produced.size / rate if produced is not None and produced.size else None
    return None


def bench_turn(manifest: Manifest, config: BenchConfig, wav: Path = QUESTION_WAV) -> dict[str, Any]:
    """One spoken turn through the runtime (after one untimed turn): end of speech -> first audio."""
    import soundfile

    from edgevoice.runtime.cascade.pipeline import CascadePipeline

    if config.backend == "torch":
        return {"input": str(wav), "error": "not run: the cascade runtime runs engines only (--backend ort or trt)"}
    audio, rate = soundfile.read(str(wav), dtype="float32")
    CascadePipeline(manifest, backend=config.backend, device=config.device).respond(audio, rate)  # untimed warm-up
    turn = CascadePipeline(manifest, backend=config.backend, device=config.device).respond(audio, rate)
    latency = {k: turn.latency[k] for k in ("asr", "first_token", "first_audio", "total") if k in turn.latency}
    return {"input": str(wav), "transcript": turn.transcript, "reply": turn.reply, "latency_s": latency,
            "first_speech_token_s": None, "error": None}


def environment() -> dict[str, Any]:
    import os
    from importlib import metadata

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    # Read from the installed metadata: importing torch just to print its version would cost seconds and memory.
    for distribution in ("onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "onnx"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    cpu = _cpu_model()
    return {"machine": {"arch": platform.machine(), "cpu": cpu, "cores": os.cpu_count(),
                        "memory_gb": _memory_gb()}, "versions": versions}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        return round(kb / 1e6, 1)
    except (OSError, ValueError, IndexError):
        return None


def run_bench(manifest: Manifest, config: BenchConfig, command: str = "") -> dict[str, Any]:
    """The whole benchmark as a JSON-ready dict (schema in docs/bench.md). One failing component is recorded, not fatal."""
    names = list(config.components) if config.components else list(manifest.components)
    for name in names:
        manifest.component(name)  # unknown names fail before any work
    results = []
    for name in names:
        try:
            results.append(bench_component(manifest, name, config))
        except EdgevoiceError as exc:
            results.append({"name": name, "backend": config.backend, "device": config.device, "error": str(exc)})
    turn = None
    if config.turn and manifest.recipe == "cascade":
        turn = bench_turn(manifest, config)
    return {"schema": SCHEMA, "date": time.strftime("%Y-%m-%d"), "package": str(manifest.directory),
            "recipe": manifest.recipe, "backend": config.backend, "device": config.device, "command": command,
            **environment(), "peak_host_rss_mb": peak_rss_bytes() / 1e6, "components": results, "turn": turn}


def markdown_record(result: Mapping[str, Any]) -> str:
    """A BENCHMARKS.md entry for one bench run: date, machine, versions, command, one table."""
    machine = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    lines = [
        f"## {result['date']} — `edgevoice bench` {result['recipe']}, backend {result['backend']} on {result['device']}",
        "",
        f"Machine: {machine['arch']}, {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB. "
        f"Versions: {versions}. Command: `{result['command']}`.",
        "",
        "| component | median ms | p90 ms | RTF | tokens/s | RSS delta MB |",
        "|---|---|---|---|---|---|",
    ]
    for c in result["components"]:
        if c.get("error"):
            lines.append(f"| {c['name']} | not run: {c['error']} | | | | |")
            continue
        lat = c["latency_ms"]
        lines.append(f"| {c['name']} | {lat['median']:.2f} | {lat['p90']:.2f} | {_fmt(c['rtf'], '.3f')} | "
                     f"{_fmt(c['tokens_per_s'], '.1f')} | {c['host_rss_delta_mb']:.0f} |")
    turn = result.get("turn")
    if turn and not turn.get("error"):
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in turn["latency_s"].items())
        lines += ["", f"Turn on {Path(turn['input']).name} (after end of speech): {stages}."]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def record(result: Mapping[str, Any], path: Path) -> None:
    """Insert the run's entry above the newest one in ``path`` (the file lists runs newest first)."""
    entry = markdown_record(result)
    text = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    cut = text.find("\n## ")
    text = text + "\n" + entry if cut < 0 else text[: cut + 1] + entry + "\n" + text[cut + 1 :]
    path.write_text(text)
