"""CPU cost of the runtime's audio path per 20 ms of audio, on one core.

Each stage is timed on its own (median and p90 over many 20 ms blocks after a warm-up), then the
whole glue a live session runs per 20 ms: the device callback (48 kHz, copy only), one pump turn
(mixdown, input checks, 48k -> 16k for mic and reference, speaker 22.05k -> 48k), the aligned
read of mic + reference, and echo cancellation. The issue's budget for all of it is 1 ms per
20 ms of audio on one core.

    python benchmarks/audio_bench.py [--seconds 20] [--quality MQ]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from edgevoice.audio.device_io import DeviceConfig, DeviceInfo, DuplexDeviceIO
from edgevoice.audio.echo import EchoCanceller
from edgevoice.audio.io import read_aligned
from edgevoice.audio.resample import StreamingResampler, mixdown
from edgevoice.audio.ring import AudioRing

DEVICE_RATE = 48000
BLOCK = DEVICE_RATE // 50  # 20 ms at the device rate


class BenchDeviceIO(DuplexDeviceIO):
    """The real rings, callback core and pump, with a stand-in device (no sound card needed)."""

    backend = "bench"

    def _list_devices(self):
        return [DeviceInfo(0, "bench", 2, 2, float(DEVICE_RATE))]

    def _default_devices(self):
        return 0, 0

    def _check_settings(self):
        pass


def timed(step, blocks: int, warmup: int = 50) -> dict[str, float]:
    for i in range(warmup):
        step(i)
    samples = []
    for i in range(blocks):
        start = time.perf_counter()
        step(i)
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    # The mean matters as much as the median: soxr and AEC3 do their work in bursts, so most calls
    # are nearly free and a few carry the cost.
    return {"mean_ms": round(statistics.fmean(samples), 4), "median_ms": round(statistics.median(samples), 4),
            "p90_ms": round(samples[int(0.9 * len(samples))], 4), "max_ms": round(samples[-1], 4)}


def speechlike(rate: int, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(int(rate * seconds)).astype(np.float32) * 0.1
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(len(noise)) / rate)  # syllable-rate modulation
    return (noise * envelope).astype(np.float32)


def stage_costs(blocks: int, quality: str) -> dict[str, dict[str, float]]:
    mic48 = speechlike(DEVICE_RATE, 1.0, 0)
    stereo = np.stack([mic48, mic48], axis=1)
    results = {}

    ring, out = AudioRing(DEVICE_RATE), np.zeros(BLOCK, dtype=np.float32)

    def ring_step(i):
        ring.write(mic48[:BLOCK])
        ring.read_into(out, pad=True)

    results["ring write + read, 960 samples"] = timed(ring_step, blocks)
    mono = np.zeros(BLOCK, dtype=np.float32)
    results["mixdown stereo -> mono, 960 frames"] = timed(lambda i: mixdown(stereo[:BLOCK], out=mono), blocks)
    for in_rate, out_rate in ((48000, 16000), (16000, 48000), (22050, 48000), (24000, 48000)):
        resampler, block = StreamingResampler(in_rate, out_rate, quality), speechlike(in_rate, 0.02, 1)
        results[f"resample {in_rate} -> {out_rate} ({quality})"] = timed(lambda i, r=resampler, b=block: r.process(b), blocks)
    canceller, near, far = EchoCanceller(16000), speechlike(16000, 0.02, 2), speechlike(16000, 0.02, 3)
    results["echo cancellation (AEC3), 320 samples"] = timed(lambda i: canceller.process(near, far), blocks)
    return results


def whole_glue(blocks: int, quality: str) -> dict[str, float]:
    """Callback + pump + aligned read + AEC for one 20 ms block of a stereo 48 kHz duplex device."""
    io = BenchDeviceIO(DeviceConfig(input_channels=2, output_channels=2, quality=quality),
                       mic_rate=16000, speaker_rate=22050)
    captured = np.repeat(speechlike(DEVICE_RATE, 0.02, 4)[:, None], 2, axis=1)  # (960, 2)
    outdata = np.zeros((BLOCK, 2), dtype=np.float32)
    speech = speechlike(22050, 0.02, 5)  # what the speak loop queues per 20 ms
    canceller = EchoCanceller(16000)
    mic_out, ref_out = np.zeros(640, dtype=np.float32), np.zeros(640, dtype=np.float32)

    def step(i):
        io.speaker.write(speech)
        io._exchange(captured.reshape(-1), outdata, BLOCK)  # the device callback
        io.pump_once()
        _, count = read_aligned(io.mic, io.reference, mic_out, ref_out)
        if count:
            canceller.process(mic_out[:count], ref_out[:count])

    result = timed(step, blocks)
    result["output_underrun_samples"] = io.output_underrun_samples
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per measurement")
    parser.add_argument("--quality", default="MQ", help="soxr quality for the resamplers")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as on a busy Jetson
    blocks = int(args.seconds * 50)

    import pywebrtc_audio  # noqa: F401  (versions below)
    import soxr

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (pinned to 1)",
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "soxr": soxr.__version__},
        "blocks_of_20ms": blocks,
        "stages": stage_costs(blocks, args.quality),
        "whole glue per 20 ms (callback + pump + aligned read + AEC)": whole_glue(blocks, args.quality),
        "budget_ms_per_20ms": 1.0,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
