"""How many concurrent conversations one `edgevoice serve` process holds in real time.

For N = 1, 2, ... it starts N Python clients at once against one in-process server (one load of
the package), each streaming a spoken question at real time (espeak-ng speech, 20 ms frames), and
measures per conversation: frames sent vs frames answered, lost microphone samples and xrun
events, gaps in the agent's speech, how long each listened chunk's compute took against the chunk
it stands for (Freeze-Omni / tiny: the ``turn_state`` events' ``compute_s``), and the first audio
after the end of the user's speech (server events, on the conversation's real clock).

A level "holds" when every criterion that applies passes; each line lists them (``criteria``):

- ``frames``: every mic frame answered by one speaker frame (none dropped);
- ``xruns``: no xrun event, no lost microphone or reference samples, no gap in the agent's speech;
- ``listen_steps``: every listened chunk computed within its own duration (160 ms, times the
  chunks it replays at a turn start); applies where the package listens in chunks and one was heard;
- ``answers``: every conversation answered with p90 first audio under 1.5 s. With ``--answers
  auto`` it applies to packages with real weights; a ``tiny`` package's random weights may never
  answer (the head dismisses every turn), so there it is ``first_audio_where_answered``: the p90
  of the answers that did come must be under 1.5 s, and none is required.

``--batch-window-ms off 2`` compares cross-session batching off and on (a window of 2 ms) in one
run: one server per setting, the levels taken in turn on each, so a machine whose load drifts
affects both alike; each line also says the load average and how many engine calls carried more
than one conversation's steps.

    .venv/bin/python benchmarks/serve_bench.py --package engines/cpu --levels 1 2 3 --batch-window-ms off 2
    .venv/bin/python benchmarks/serve_bench.py --package engines/tiny-cpu --levels 1 2 4 8 --batch-window-ms off 2 --repeat 3
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
FIRST_AUDIO_P90_S = 1.5  # the real-time bar for an answer's first audio after the user stops
LISTEN_CHUNK_S = 0.16  # one Freeze-Omni listen chunk (HeadTurnOptions.chunk_ms)
REPEAT_GAP_S = 2.5  # between repeats: longer than a Freeze-Omni gate's close (vad_close_ms, 2 s), so each is a turn


def spoken(text: str, repeat: int = 1) -> np.ndarray:
    """``text`` by espeak-ng at 16 kHz ``repeat`` times: 0.5 s of silence before, REPEAT_GAP_S
    between, 1 s after."""
    import io

    import soundfile

    from edgevoice.audio.resample import resample

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed: sudo apt install espeak-ng")
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    speech, gap = resample(samples, rate, RATE), np.zeros(int(REPEAT_GAP_S * RATE), np.float32)
    parts = [np.zeros(RATE // 2, np.float32)]
    for index in range(repeat):
        parts += [gap] if index else []
        parts.append(speech)
    return np.concatenate([*parts, np.zeros(RATE, np.float32)])


def conversation_figures(client) -> dict:
    """What one finished client saw: its first audio, losses and listen-step timings."""
    from edgevoice.runtime import events as ev

    history, summary = client.events.history(), client.summary()
    first_audio = list(ev.first_audio_after_speech_end(history).values())
    steps = [e.data for e in history if e.kind == ev.TURN_STATE and "compute_s" in e.data]
    return {
        "first_audio_s": round(first_audio[0], 3) if first_audio else None,
        "unanswered_frames": summary["frames_sent"] - summary["frames_received"],
        "xrun_events": len(client.events.history(ev.XRUN)),
        "mic_overrun_samples": summary.get("mic_overrun_samples", 0),
        "reference_overrun_samples": summary.get("reference_overrun_samples", 0),
        "reply_gaps": summary.get("reply_gaps", 0),
        "listen_chunks": len(steps),
        # A turn-start chunk also feeds the chunks it replays: its budget is their time too.
        "listen_over_chunk": sum(s["compute_s"] > LISTEN_CHUNK_S * (1 + s.get("replayed", 0)) for s in steps),
        "listen_compute_s": [round(s["compute_s"], 4) for s in steps],
    }


def verdicts(figures: list[dict], answers_required: bool) -> dict[str, bool]:
    """Each applicable criterion (module docstring) and whether this level passed it."""
    result = {
        "frames": all(f["unanswered_frames"] == 0 for f in figures),
        "xruns": all(not (f["xrun_events"] or f["mic_overrun_samples"] or f["reference_overrun_samples"]
                          or f["reply_gaps"]) for f in figures),
    }
    if any(f["listen_chunks"] for f in figures):
        result["listen_steps"] = all(f["listen_over_chunk"] == 0 for f in figures)
    answered = [f["first_audio_s"] for f in figures if f["first_audio_s"] is not None]
    p90_ok = bool(answered) and float(np.percentile(answered, 90)) < FIRST_AUDIO_P90_S
    if answers_required:
        result["answers"] = len(answered) == len(figures) and p90_ok
    elif answered:
        result["first_audio_where_answered"] = p90_ok
    return result


def one_level(server, count: int, repeat: int, answers_required: bool) -> dict:
    from edgevoice.audio.io import FileIO
    from edgevoice.client import Client

    speaker_rate = server.conversations.agent.speaker_rate
    runs = []
    for index in range(count):
        client = Client(server.ws_url, token=server.token, quiet_s=1.5)
        io = FileIO(spoken(QUESTIONS[index % len(QUESTIONS)], repeat), recording_rate=RATE, mic_rate=RATE,
                    speaker_rate=speaker_rate, pace=1.0)
        runs.append((client, io))
    started = time.monotonic()
    for client, io in runs:
        client.start(io)
    for client, _ in runs:
        client.wait(300)
    figures = [conversation_figures(client) for client, _ in runs]
    passed = verdicts(figures, answers_required)
    answered = [f["first_audio_s"] for f in figures if f["first_audio_s"] is not None]
    compute = [s for f in figures for s in f["listen_compute_s"]]
    return {"conversations": count, "holds_real_time": all(passed.values()), "criteria": passed,
            "answered": f"{len(answered)}/{count}",
            "first_audio_p90_s": round(float(np.percentile(answered, 90)), 3) if answered else None,
            "listen_chunks": len(compute),
            "listen_compute_p90_s": round(float(np.percentile(compute, 90)), 4) if compute else None,
            "listen_compute_max_s": max(compute) if compute else None,
            "per_conversation": [{k: v for k, v in f.items() if k != "listen_compute_s"} for f in figures],
            "wall_s": round(time.monotonic() - started, 1)}


def window(text: str) -> float | None:
    return None if text == "off" else float(text)


def measured(server, count: int, setting: str, repeat: int, answers_required: bool) -> dict:
    shared_before = server.conversations.engines.shared_calls
    result = {"batching": setting, **one_level(server, count, repeat, answers_required)}
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
    parser.add_argument("--repeat", type=int, default=1, help="times each client says its question (more turns)")
    parser.add_argument("--answers", choices=("auto", "required", "optional"), default="auto",
                        help="whether every conversation must be answered (auto: not for a tiny package)")
    args = parser.parse_args()
    from edgevoice.serve.server import Server

    with contextlib.ExitStack() as stack:
        servers = {setting: stack.enter_context(Server(args.package, port=0, max_sessions=max(args.levels),
                                                       batch_window_ms=window(setting)).start())
                   for setting in args.batch_window_ms}
        recipe = next(iter(servers.values())).conversations.recipe
        required = args.answers == "required" or (args.answers == "auto" and recipe != "tiny")
        print(json.dumps({"package": str(args.package), "recipe": recipe, "answers_required": required}), flush=True)
        for count in args.levels:
            for setting, server in servers.items():
                print(json.dumps(measured(server, count, setting, args.repeat, required)), flush=True)


if __name__ == "__main__":
    main()
