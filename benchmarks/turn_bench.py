"""One spoken turn through a cascade package: end of user speech -> first reply audio, per stage.

Offline turn (file in, file out): the clock starts when the user's speech has ended, so the
numbers are what a listener waits for. Each question is answered ``--repeats`` times by a fresh
conversation; medians are reported.

    python benchmarks/turn_bench.py [--package engines/cpu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import numpy as np

QUESTIONS = ("What is the capital of France?", "Can you tell me a fun fact about cats?", "How do I make a cup of tea?")


def espeak(text: str) -> np.ndarray:
    import io

    import soundfile

    raw = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
    samples, rate = soundfile.read(io.BytesIO(raw), dtype="float32")
    from edgevoice.audio.resample import resample

    return np.concatenate([np.zeros(8000, np.float32), resample(samples, rate, 16000), np.zeros(8000, np.float32)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="engines/cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import onnxruntime

    from edgevoice.runtime.cascade.pipeline import CascadePipeline

    turns = []
    for question in QUESTIONS:
        audio = espeak(question)
        for _ in range(args.repeats):
            agent = CascadePipeline(args.package)
            turn = agent.respond(audio, 16000)
            turns.append({"question": question, "transcript": turn.transcript, "reply": turn.reply, **turn.latency})
    stages = ["asr", "first_token", "first_audio", "llm", "tts", "total"]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "versions": {"onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
        "median_s": {s: statistics.median(t[s] for t in turns if s in t) for s in stages},
        "turns": turns,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
