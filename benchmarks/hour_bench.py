"""A long conversation on the virtual clock with the real cascade engines: memory, xruns, glue cost.

An hour (by default) of microphone audio — silence with a spoken question every few minutes,
held as a ``Timeline`` — goes through a ``DuplexSession`` with echo cancellation, the real VAD,
Whisper, SmolLM2 and Piper engines, stages inline (deterministic). It reports the process RSS
over the run (it must stay flat), every xrun counter, and the CPU cost of the runtime itself per
20 ms of audio while listening: each listen step's wall time minus the time spent inside the
VAD engine, split into where it goes: the device stand-in (``FileIO``'s simulated capture and
playback, which a live session replaces by the device callback and pump that ``audio_bench.py``
measures), echo cancellation (AEC3), and the rest: the runtime's own glue (aligned ring reads,
frame bookkeeping, VAD feeds, turn policy, events, scheduling).

    python benchmarks/hour_bench.py --package engines/cpu [--minutes 60] [--every 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import espeak  # noqa: E402  (espeak-ng speech, as the tests use)

from edgevoice.audio.io import FileIO  # noqa: E402
from edgevoice.audio.timeline import Timeline  # noqa: E402
from edgevoice.runtime import events as ev  # noqa: E402
from edgevoice.runtime.cascade.pipeline import CascadePipeline  # noqa: E402
from edgevoice.runtime.cascade.session import DuplexSession, SessionOptions  # noqa: E402

RATE = 16000
QUESTIONS = ("What is the capital of France?", "Can you tell me a fun fact about cats?", "How many legs does a spider have?")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Timed:
    """Wraps a callable to add up the time spent inside it."""

    def __init__(self, call):
        self.call, self.seconds = call, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.call(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def per_20ms(samples: list[float]) -> dict:
    samples = sorted(samples)
    return {"median": round(statistics.median(samples), 4), "p90": round(samples[int(0.9 * len(samples))], 4)}


def timeline(minutes: float, every: float) -> Timeline:
    line = Timeline(minutes * 60, RATE)
    clips = [espeak(q) for q in QUESTIONS]
    for i, at in enumerate(range(int(every / 2), int(minutes * 60) - 30, int(every))):
        line.place(at, clips[i % len(clips)])
    return line


def soak(package: str, minutes: float, every: float) -> dict:
    recording = timeline(minutes, every)
    io = FileIO(recording, mic_rate=RATE, speaker_rate=22050, keep_played_s=30.0)
    session = DuplexSession(CascadePipeline(package), io, SessionOptions(threaded=False))
    # Parts of a listening step timed apart: (name, wrapper); the rest of the step is the runtime's glue.
    parts = {"vad_engine": Timed(session._vad), "device_stand_in": Timed(io.wait_for_mic),
             "echo_cancellation": Timed(session._echo.process)}
    session._vad, io.wait_for_mic, session._echo.process = (parts["vad_engine"], parts["device_stand_in"],
                                                            parts["echo_cancellation"])
    rss, next_mark, scale = [], 60.0, 20 * RATE / (1000 * session.frame)  # per step -> per 20 ms of audio
    step_ms: dict[str, list[float]] = {name: [] for name in ("step_minus_vad", *parts, "runtime_glue")}
    started = time.perf_counter()
    with io:
        while io.clock.now() < minutes * 60:
            idle = session.idle
            before, t0 = {name: part.seconds for name, part in parts.items()}, time.perf_counter()
            if not session.step():
                break
            if idle and session.idle:  # a pure listening step: no model but the VAD ran
                spent = {name: (part.seconds - before[name]) * 1000 * scale for name, part in parts.items()}
                total = (time.perf_counter() - t0) * 1000 * scale
                for name, ms in spent.items():
                    step_ms[name].append(ms)
                step_ms["step_minus_vad"].append(total - spent["vad_engine"])
                step_ms["runtime_glue"].append(total - sum(spent.values()))
            if io.clock.now() >= next_mark:
                rss.append((round(io.clock.now() / 60, 1), round(rss_mb(), 1)))
                next_mark += 300.0
    session.close()
    return {
        "minutes": minutes, "question_every_s": every, "wall_s": round(time.perf_counter() - started, 1),
        "rss_mb_by_minute": rss, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "summary": session.summary(),
        "transcripts": [e.data["text"] for e in session.events.history(ev.TRANSCRIPT)],
        "warnings": [e.data for e in session.events.history(ev.WARNING)],
        "listening_steps": len(step_ms["runtime_glue"]),
        # step_minus_vad is the figure earlier entries called the glue (it held AEC3 and the stand-in)
        "ms_per_20ms_while_listening": {name: per_20ms(ms) for name, ms in step_ms.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="engines/cpu")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=300.0, help="seconds between two questions")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args()
    result = soak(args.package, args.minutes, args.every)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
