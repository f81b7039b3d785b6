"""End of user speech -> first agent audio in a live-like duplex session, with and without
think-while-listening, and with the words' end-of-turn vote on and off.

The session runs as on a sound card: stages on their own threads, the microphone paced at real
time (``FileIO(pace=1.0)``), so model compute competes with listening exactly as it would live.
Each spoken question is followed by silence; latency is read from the session's events:

- from the end of speech: the last speech frame the VAD saw (``user_speech_end.speech_end``)
  to ``first_audio`` — what the user experiences;
- from the endpoint: the turn decision (``endpoint_silence_ms`` after the end of speech) to
  ``first_audio``.

    python benchmarks/duplex_latency_bench.py --package engines/cpu [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import espeak  # noqa: E402

from edgevoice.audio.io import FileIO  # noqa: E402
from edgevoice.runtime import events as ev  # noqa: E402
from edgevoice.runtime.cascade.pipeline import CascadePipeline  # noqa: E402
from edgevoice.runtime.cascade.session import DuplexSession, SessionOptions  # noqa: E402

RATE = 16000
QUESTIONS = ("What is the capital of France?", "What is the largest planet in the solar system?",
             "How many days are there in a week?")


def conversation(gap_s: float) -> np.ndarray:
    parts = [np.zeros(int(0.5 * RATE), np.float32)]
    for question in QUESTIONS:
        parts += [espeak(question), np.zeros(int(gap_s * RATE), np.float32)]
    return np.concatenate(parts)


# (result key, session options): think-while-listening off; on with the words' end-of-turn vote
# (the default); on with the audio model deciding alone.
MODES = (
    ("without", {"think_while_listening": False}),
    ("with_think_while_listening", {"think_while_listening": True}),
    ("with_think_while_listening_no_words", {"think_while_listening": True, "text_endpointing": False}),
)


def measure(pipeline: CascadePipeline, options: dict, recording: np.ndarray) -> list[dict]:
    pipeline.history.clear()
    io = FileIO(recording, recording_rate=RATE, mic_rate=RATE, speaker_rate=pipeline.voice.sample_rate, pace=1.0)
    session = DuplexSession(pipeline, io, SessionOptions(echo_cancellation=False, **options))
    with io:
        session.run(len(recording) / RATE)
    session.close()
    turns = []
    for end in session.events.history(ev.USER_SPEECH_END):
        audio = [e for e in session.events.history(ev.FIRST_AUDIO) if e.turn == end.turn]
        text = [e.data["text"] for e in session.events.history(ev.TRANSCRIPT) if e.turn == end.turn]
        if audio:
            turns.append({"transcript": text[-1] if text else "",
                          "from_speech_end_s": round(audio[0].time - end.data["speech_end"], 3),
                          "from_endpoint_s": round(audio[0].time - end.time, 3),
                          "endpoint_silence_ms": end.data["silence_ms"], "endpoint": end.data["endpoint"],
                          "text_eot_prob": end.data.get("text_eot_prob")})
    return turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="engines/cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gap", type=float, default=7.0, help="silence after each question, seconds")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args()
    pipeline = CascadePipeline(args.package)
    recording = conversation(args.gap)
    result = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    for key, options in MODES:
        turns = [t for _ in range(args.repeats) for t in measure(pipeline, options, recording)]
        result[key] = {"turns": turns,
                       "median_from_speech_end_s": statistics.median(t["from_speech_end_s"] for t in turns),
                       "median_from_endpoint_s": statistics.median(t["from_endpoint_s"] for t in turns),
                       "median_endpoint_silence_ms": statistics.median(t["endpoint_silence_ms"] for t in turns)}
    result["load_average_at_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
