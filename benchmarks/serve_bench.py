"""How many concurrent conversations one `edgevoice serve` process holds in real time.

For N = 1, 2, ... it starts N Python clients at once against one in-process server (one load of
the package), each streaming a spoken question at real time (espeak-ng speech, 20 ms frames), and
measures per conversation: the first audio after the end of the user's speech (server events,
on the conversation's real clock), frames sent vs frames answered, lost microphone samples and
gaps in the agent's speech. A level "holds" when every conversation answered, the p90 first audio
is under 1.5 s and no frame or sample was lost. Prints one JSON object per level.

``--batch-window-ms off 2`` compares cross-session batching off and on (a window of 2 ms) in one
run: one server per setting (two loads of the package), the levels taken in turn on each, so a
machine whose load drifts affects both alike; each line also says the load average and how many
engine calls carried more than one conversation's steps.

    .venv/bin/python benchmarks/serve_bench.py --package engines/cpu --levels 1 2 3 --batch-window-ms off 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

QUESTIONS = ("What is the capital of France?", "What is the capital of Japan?", "What color is the sky?",
             "What is the capital of Italy?")
RATE = 16000


def spoken(text: str) -> np.ndarray:
    """``text`` by espeak-ng at 16 kHz, with 0.5 s of silence on both sides."""
    import io

    import soundfile

    from edgevoice.audio.resample import resample

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed: sudo apt install espeak-ng")
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    pad = np.zeros(RATE // 2, np.float32)
    return np.concatenate([pad, resample(samples, rate, RATE), pad])


def one_level(server, count: int) -> dict:
    from edgevoice.audio.io import FileIO
    from edgevoice.client import Client
    from edgevoice.runtime import events as ev

    runs = []
    for index in range(count):
        client = Client(server.ws_url, token=server.token, quiet_s=1.5)
        io = FileIO(spoken(QUESTIONS[index % len(QUESTIONS)]), recording_rate=RATE, mic_rate=RATE,
                    speaker_rate=24000, pace=1.0)
        runs.append((client, io))
    started = time.monotonic()
    for client, io in runs:
        client.start(io)
    for client, _ in runs:
        client.wait(300)
    latencies, lost = [], []
    for client, _ in runs:
        history = client.events.history()
        ends = [e.time for e in history if e.kind == ev.USER_SPEECH_END]
        audio = [e.time for e in history if e.kind == ev.FIRST_AUDIO]
        latencies.append(round(audio[0] - ends[0], 3) if ends and audio else None)
        summary = client.summary()
        lost.append({"unanswered_frames": summary["frames_sent"] - summary["frames_received"],
                     "mic_overrun_samples": summary.get("mic_overrun_samples"), "reply_gaps": summary.get("reply_gaps")})
    answered = [x for x in latencies if x is not None]
    p90 = float(np.percentile(answered, 90)) if answered else None
    clean = all(x["unanswered_frames"] == 0 and not x["mic_overrun_samples"] and not x["reply_gaps"] for x in lost)
    holds = len(answered) == count and p90 is not None and p90 < 1.5 and clean
    return {"conversations": count, "first_audio_s": latencies, "first_audio_p90_s": p90, "losses": lost,
            "holds_real_time": holds, "wall_s": round(time.monotonic() - started, 1)}


def window(text: str) -> float | None:
    return None if text == "off" else float(text)


def measured(server, count: int, setting: str) -> dict:
    shared_before = server.conversations.engines.shared_calls
    result = {"batching": setting, **one_level(server, count)}
    result["shared_calls"] = server.conversations.engines.shared_calls - shared_before
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    while server.conversations.active:  # this level's sessions wind down before the next
        time.sleep(0.2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=Path("engines/cpu"))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--batch-window-ms", nargs="+", default=["off"], metavar="MS",
                        help="batching settings to compare: 'off' or a window in ms (e.g. off 2)")
    args = parser.parse_args()
    from edgevoice.serve.server import Server

    with contextlib.ExitStack() as stack:
        servers = {setting: stack.enter_context(Server(args.package, port=0, max_sessions=max(args.levels),
                                                       batch_window_ms=window(setting)).start())
                   for setting in args.batch_window_ms}
        for count in args.levels:
            for setting, server in servers.items():
                print(json.dumps(measured(server, count, setting)), flush=True)


if __name__ == "__main__":
    main()
