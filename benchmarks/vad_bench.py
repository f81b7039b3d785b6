"""Silero VAD per-chunk step latency: our exported graph vs the silero-vad package's own runtimes.

Side by side in one run on the same audio (ratios matter more than absolute numbers on a noisy
machine): our vad.onnx on onnxruntime through edgevoice's Runner (validation included), the
package's own silero_vad.onnx on onnxruntime, and the package's TorchScript model.

    python benchmarks/vad_bench.py [--package engines/cpu] [--seconds 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import numpy as np


def timed(step, chunks, warmup: int = 20) -> dict[str, float]:
    for chunk in chunks[:warmup]:
        step(chunk)
    samples = []
    for chunk in chunks:
        start = time.perf_counter()
        step(chunk)
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * len(samples))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default=None, help="exported silero-vad package (default: export one)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from edgevoice.export import export_package
    from edgevoice.recipes.silero_vad import silero_jit_path, voiced_test_signal
    from edgevoice.runtime import VadPipeline
    from edgevoice.weights.packages import package_file
    from edgevoice.weights.torchscript import load_torchscript

    torch.set_num_threads(args.threads)
    package = args.package or export_package(model="silero-vad", target="cpu", out=tempfile.mkdtemp()).directory
    audio = voiced_test_signal(args.seconds)
    chunks = [c[None] for c in audio[: len(audio) // 512 * 512].reshape(-1, 512)]

    ours = VadPipeline(package).runner.stream()
    results = {"edgevoice vad.onnx (ort, Runner)": timed(lambda c: ours({"chunk": c}), chunks)}

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    upstream = ort.InferenceSession(str(package_file("silero_vad", "data/silero_vad.onnx", "silero-vad")), options)
    state = {"state": np.zeros((2, 1, 128), np.float32)}
    rate = np.array(16000, dtype=np.int64)

    def upstream_step(chunk):  # the upstream graph takes the 64-sample context prepended by the caller
        window = np.concatenate([upstream_step.context, chunk], axis=1)
        _, state["state"] = upstream.run(None, {"input": window, "state": state["state"], "sr": rate})
        upstream_step.context = window[:, -64:]

    upstream_step.context = np.zeros((1, 64), np.float32)
    results["silero_vad.onnx (ort, raw session)"] = timed(upstream_step, chunks)

    jit = load_torchscript(silero_jit_path())
    with torch.no_grad():
        results["silero_vad.jit (torch)"] = timed(lambda c: jit(torch.from_numpy(c), 16000), chunks)

    chunk_ms = 512 / 16000 * 1e3
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "threads": args.threads,
        "chunks": len(chunks),
        "results": {k: {**v, "rtf": v["median_ms"] / chunk_ms} for k, v in results.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
