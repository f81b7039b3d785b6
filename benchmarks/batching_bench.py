"""Cross-session batching gain per component: steps per second at batch 1, 2, 4, 8 on onnxruntime CPU.

For every component whose rows can share a call (``edgevoice.runtime.batching.batch_support``),
one step per session is built from the manifest (zero state; positions, offsets and lengths
differ per row, as sessions' do) and B of them run as one call. Two timings per batch size:

- engine: the joined call alone (``runner._infer_impl`` on rows already joined);
- batched: what a ``BatchedRunner`` does per call, joining the rows (state included) and
  splitting the outputs back, without the queue hand-off.

Batch sizes are interleaved round by round, so a neighbour's load on a shared machine lands on
all of them alike; compare ratios within one run. "per core" divides by the intra-op threads.

A component whose caches grow (the cascade LLM's "context" rows, ``runtime/cache_growth.py``) is
measured at each capacity of ``--context`` (default: its smallest and largest), reported as
``llm@256``, ``llm@1024``: a step attends over every row of its cache, so the gain depends on it.

    python benchmarks/batching_bench.py [--cascade engines/cpu] [--tiny engines/tiny-cpu]
        [--batches 1 2 4 8] [--threads 2] [--rounds 5] [--min-seconds 0.05] [--components vad llm ...]
        [--context 256 512 768 1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from edgevoice.runtime.cache_growth import CacheGrowth

# The step each component takes per session call: sizes of its named dims other than batch.
STEP_DIMS = {"tokens": 1, "prefix_rows": 64, "text_rows": 16}
# Per-row values of integer inputs (row i gets base + i * stride): sessions sit at different points.
ROW_INTS = {"position": (100, 7), "offset": (20, 3), "length": (5 * 16000, 8000), "pe_index": (400, 4),
            "cached": (64, 0), "prefix_len": (40, 1)}


def row_feeds(component, row: int, rng: np.random.Generator, capacity: int | None = None) -> dict[str, np.ndarray]:
    """One session's step: every input at batch 1, state zeros but for the counters; a growing
    cache holds ``capacity`` rows."""
    sizes = {**STEP_DIMS, **({} if capacity is None else {CacheGrowth.of(component).dim: capacity})}
    feeds = {}
    for spec in component.inputs:
        shape = [1 if d == "batch" else sizes.get(d, 1) if isinstance(d, str) else d for d in spec.shape]
        if spec.dtype.startswith("int"):
            base, stride = ROW_INTS.get(spec.name, (1, 0))
            feeds[spec.name] = np.full(shape, base + row * stride, dtype=spec.dtype)
        elif spec.name in component.state_inputs:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        else:
            feeds[spec.name] = (0.1 * rng.standard_normal(shape)).astype(spec.dtype)
    return feeds


def capacities(component, asked: list[int] | None) -> list[int | None]:
    """The cache capacities to measure ``component`` at: None for a fixed one."""
    growth = CacheGrowth.of(component)
    if growth is None:
        return [None]
    chosen = asked or [growth.step, growth.most]
    wrong = [c for c in chosen if not growth.step <= c <= growth.most or c % growth.step]
    if wrong:
        raise SystemExit(f"--context {wrong}: {component.name}'s cache holds whole steps of {growth.step} rows, "
                         f"{growth.step}..{growth.most}")
    return chosen


def per_call(call, min_seconds: float) -> float:
    """Mean seconds per call over as many calls as fill ``min_seconds`` (one call at least)."""
    calls, start = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def measure(runner, batches: list[int], rounds: int, min_seconds: float,
            capacity: int | None = None) -> dict[int, dict[str, float]]:
    """Median over rounds of the seconds per call at each batch size: engine only, and with join + split.

    Each batch size has its own RowLayout, as each group of sessions stepping together would: the
    layout re-uses what the same group's previous call left (state outputs, unchanged inputs).
    """
    from edgevoice.runtime.batching import RowLayout

    rng = np.random.default_rng(0)
    steps = [row_feeds(runner.component, row, rng, capacity) for row in range(max(batches))]
    layouts = {b: RowLayout(runner.component) for b in batches}
    joined = {b: RowLayout(runner.component).join(steps[:b]) for b in batches}

    # State output -> input; integer counters (positions) stay put so a long run never walks
    # past a cache's capacity (they are a few bytes: joining them costs nothing).
    wiring = {out: inp for out, inp in runner.component.state.items()
              if not runner.component.input(inp).dtype.startswith("int")}
    current = {b: [dict(step) for step in steps[:b]] for b in batches}

    def through_batcher(b: int) -> None:
        """What BatchedRunner._run_joined does with b steps, each session's state fed back from the
        previous call as a decode loop does (so a group that stays together joins without copying)."""
        rows, layout = current[b], layouts[b]
        outs = [runner._infer_impl(rows[0])] if b == 1 else layout.split(runner._infer_impl(layout.join(rows)), [1] * b)
        for row, out in zip(rows, outs):
            row.update({wiring[name]: value for name, value in out.items() if name in wiring})

    for b in batches:  # warm-up: first calls at a new shape allocate; the group's first join copies
        runner._infer_impl(joined[b])
        through_batcher(b)
    engine: dict[int, list[float]] = {b: [] for b in batches}
    wrapped: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(rounds):
        for b in batches:
            engine[b].append(per_call(lambda b=b: runner._infer_impl(joined[b]), min_seconds))
            wrapped[b].append(per_call(lambda b=b: through_batcher(b), min_seconds))
    return {b: {"engine_s": statistics.median(engine[b]), "batched_s": statistics.median(wrapped[b])} for b in batches}


def lone_overhead(runner, rounds: int, min_seconds: float, capacity: int | None = None) -> dict[str, float]:
    """A lone session's step through a BatchedRunner (one member: no wait, one thread hand-off)
    vs the plain runner's ``infer``, in ms per step."""
    from edgevoice.runtime.batching import BatchMembers, batched

    step = row_feeds(runner.component, 0, np.random.default_rng(1), capacity)
    members = BatchMembers().join()
    wrapped = batched(runner, window_ms=2, max_batch=8, members=members)
    direct, through = [], []
    for _ in range(rounds):
        direct.append(per_call(lambda: runner.infer(step), min_seconds))
        through.append(per_call(lambda: wrapped.infer(step), min_seconds))
    wrapped.close()
    return {"direct_ms": 1e3 * statistics.median(direct), "lone_batched_ms": 1e3 * statistics.median(through)}


def bench_package(package: Path, names: list[str] | None, batches: list[int], threads: int,
                  rounds: int, min_seconds: float, context: list[int] | None = None) -> dict[str, dict]:
    from edgevoice.backends.ort import OrtRunner
    from edgevoice.manifest import read_manifest
    from edgevoice.runtime.batching import batch_support

    manifest = read_manifest(package, verify_files=False)
    results = {}
    for name, component in manifest.components.items():
        if names and name not in names:
            continue
        support = batch_support(component)
        if not support.batches:
            results[name] = {"falls_back": support.reason}
            print(f"{name}: falls back to per-session calls: {support.reason}", flush=True)
            continue
        runner = OrtRunner(component, manifest.path(component.onnx), threads=threads)
        for capacity in capacities(component, context):
            label = name if capacity is None else f"{name}@{capacity}"
            timings = measure(runner, batches, rounds, min_seconds, capacity)
            results[label] = {str(b): summarize(b, t, timings[1], threads) for b, t in timings.items()}
            print(f"{label}: " + "  ".join(f"B={b} {r['steps_per_s']:.1f}/s x{r['gain']:.2f} "
                                           f"(engine x{r['engine_gain']:.2f})"
                                           for b, r in ((int(k), v) for k, v in results[label].items())), flush=True)
            results[label]["lone"] = lone_overhead(runner, rounds, min_seconds, capacity)
            print(f"  lone session: {results[label]['lone']}", flush=True)
        del runner
    return results


def summarize(b: int, timing: dict[str, float], single: dict[str, float], threads: int) -> dict[str, float]:
    steps = b / timing["batched_s"]
    return {
        "call_ms": 1e3 * timing["engine_s"],
        "batched_call_ms": 1e3 * timing["batched_s"],
        "steps_per_s": steps,
        "steps_per_s_per_core": steps / threads,
        "engine_steps_per_s": b / timing["engine_s"],
        "gain": steps * single["batched_s"],  # throughput vs batch 1, join + split included
        "engine_gain": b * single["engine_s"] / timing["engine_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cascade", type=Path, default=Path("engines/cpu"))
    parser.add_argument("--tiny", type=Path, default=Path("engines/tiny-cpu"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.05, help="time each point over at least this long")
    parser.add_argument("--components", nargs="*", default=None, help="only these components (default: all)")
    parser.add_argument("--context", type=int, nargs="*", default=None,
                        help="capacities (rows) to measure a growing cache at (default: its smallest and largest)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if 1 not in args.batches:
        parser.error("--batches must include 1: gains are against batch 1")

    import onnxruntime

    report = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": args.threads,
              "onnxruntime": onnxruntime.__version__, "rounds": args.rounds,
              "min_seconds": args.min_seconds, "packages": {}}
    for package in (args.cascade, args.tiny):
        if (package / "manifest.json").is_file():
            print(f"== {package}", flush=True)
            report["packages"][str(package)] = bench_package(package, args.components, sorted(args.batches),
                                                             args.threads, args.rounds, args.min_seconds,
                                                             args.context)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
