"""Turn-taking on the virtual clock: thinking pauses cut off vs the delay before a finished turn is taken.

The same espeak-ng audio goes, frame by frame (512 samples at 16 kHz, 32 ms), through each policy:
the VAD alone (``VadTurnPolicy``, 600 ms and 300 ms endpoints), ``SemanticTurnPolicy`` with the
package's end-of-turn model (each score request answered in the frame it is made; also with the
re-checks turned off, one score per silence), and the peer, pipecat's ``LocalSmartTurnAnalyzerV3``
behind pipecat's own Silero VAD analyzer, driven the way pipecat's
``TurnAnalyzerUserTurnStopStrategy`` drives it (one score when the VAD reports a stop
after ``stop_secs``, the analyzer's own silence timeout otherwise; ``wait_for_transcript=False``,
so no STT wait is added). No wall clock decides anything: pipecat's analyzer reads a virtual
``time.monotonic``.

Two sets, built at run time (espeak-ng voices and rates varied, sox resampling without dither):
"pause" items, a sentence with a 0.7-1.5 s thinking pause in the middle, and "complete" items, a
whole question or statement. Each item: 0.5 s of silence, the speech, 2.5 s of silence.

    python benchmarks/turn_taking_bench.py [--package engines/cpu] [--pause-items 24] [--complete-items 24] [--no-peer]

Measures, per policy: false cut-offs (the turn taken before the end of a pause item's speech),
endpoint delay on complete items (end of speech -> turn taken: median, p90), early turns on
complete items, late (over ``--late-ms``) and missed turns (none within the trailing 2.5 s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

RATE = 16000
FRAME = 512  # one VAD frame: 32 ms
LEAD_S = 0.5
TAIL_S = 2.5
VOICED = 1e-3  # |sample| above this is part of espeak's speech (its silence is digital zero)
ONE_CHECK_RECHECK_MS = 60_000.0  # longer than any silence here: the first score is the only one

PAUSE_ITEMS = (
    ("I would like to know", "what the weather is like tomorrow."),
    ("Can you tell me", "how far the moon is?"),
    ("What I really want is", "a table for two at eight."),
    ("Could you remind me to", "call my sister tonight?"),
    ("The thing I keep forgetting is", "where I parked the car."),
    ("I was wondering if", "you could play some jazz."),
    ("Please set an alarm for", "six thirty in the morning."),
    ("How long does it take to", "boil an egg?"),
    ("My favourite part of the trip was", "the boat ride on the lake."),
    ("Can you find me a recipe for", "something with chickpeas?"),
    ("I need to send an email to", "my manager about the meeting."),
    ("What is the best way to", "learn a new language?"),
    ("Tell me about the history of", "the Roman empire."),
    ("I think the answer is", "somewhere around forty two."),
    ("Could you turn the lights", "down in the living room?"),
    ("Remind me what time", "the train leaves on Friday."),
    ("I'd like to order", "a large pizza with mushrooms."),
    ("What should I cook for", "dinner tonight?"),
    ("Do you know if", "the museum is open on Mondays?"),
    ("The reason I'm asking is that", "my flight was cancelled."),
    ("Can you explain how", "a rainbow forms?"),
    ("I want to book a flight to", "Lisbon next weekend."),
    ("So the problem with my laptop is", "it will not turn on."),
    ("Could you add milk and", "eggs to my shopping list?"),
)

COMPLETE_ITEMS = (
    "What is the capital of France?",
    "How far away is the moon?",
    "Can you tell me a fun fact about cats?",
    "What time is it in Tokyo right now?",
    "Please turn off the kitchen lights.",
    "How do I make a cup of tea?",
    "I would like to know what the weather is like tomorrow.",
    "Set a timer for ten minutes.",
    "Who wrote the novel Pride and Prejudice?",
    "What is the tallest mountain in the world?",
    "Play some relaxing music.",
    "How many days are there in a leap year?",
    "Thanks, that was really helpful.",
    "Can you recommend a good book to read?",
    "What is the square root of one hundred and forty four?",
    "Remind me to water the plants tomorrow morning.",
    "Why is the sky blue?",
    "How do you say thank you in Japanese?",
    "I need a taxi to the airport.",
    "What's the difference between a frog and a toad?",
    "Tell me a joke.",
    "Is it going to rain this afternoon?",
    "Add bread to my shopping list.",
    "How long does it take to fly to London?",
)

VOICES = (("en-us", 160), ("en-gb", 175), ("en-us+f3", 145), ("en-us+m7", 190), ("en-gb+f2", 140), ("en-us", 180))


# --- the set ------------------------------------------------------------------------------------


def speak(text: str, voice: str, rate: int) -> np.ndarray:
    """``text`` by espeak-ng, resampled to 16 kHz mono by sox without dither, trimmed to its speech."""
    import soundfile

    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed to build the set: sudo apt install espeak-ng sox")
    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text],
                         check=True, capture_output=True).stdout
    wav = subprocess.run(["sox", "-D", "-t", "wav", "-", "-t", "wav", "-r", str(RATE), "-c", "1", "-b", "16", "-"],
                         input=raw, check=True, capture_output=True).stdout
    samples, rate_read = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert rate_read == RATE
    voiced = np.flatnonzero(np.abs(samples) > VOICED)
    return samples[voiced[0] : voiced[-1] + 1]


@dataclass
class Item:
    kind: str  # "pause" or "complete"
    text: str
    voice: str
    rate: int
    audio: np.ndarray = field(repr=False)
    speech_end: float  # seconds: end of the last word
    pause: tuple[float, float] | None = None  # (start, end) of the thinking pause, seconds

    def summary(self) -> dict:
        out = {"kind": self.kind, "text": self.text, "voice": self.voice, "rate": self.rate,
               "speech_end_s": round(self.speech_end, 3)}
        if self.pause:
            out["pause_s"] = [round(self.pause[0], 3), round(self.pause[1], 3)]
        return out


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * RATE)), np.float32)


def pause_seconds(index: int) -> float:
    """0.7 to 1.5 s in 0.1 s steps, every value once per nine items."""
    return 0.7 + 0.1 * ((index * 4) % 9)


def build_set(pause_items: int, complete_items: int) -> list[Item]:
    items = []
    for i, (first, second) in enumerate(PAUSE_ITEMS[:pause_items]):
        voice, rate = VOICES[i % len(VOICES)]
        a, b = speak(first, voice, rate), speak(second, voice, rate)
        gap, lead = silence(pause_seconds(i)), silence(LEAD_S)
        pause_start = (lead.size + a.size) / RATE
        pause_end = pause_start + gap.size / RATE
        audio = np.concatenate([lead, a, gap, b, silence(TAIL_S)])
        items.append(Item("pause", f"{first} ... {second}", voice, rate, audio, pause_end + b.size / RATE,
                          (pause_start, pause_end)))
    for i, text in enumerate(COMPLETE_ITEMS[:complete_items]):
        voice, rate = VOICES[(i + 3) % len(VOICES)]
        speech = speak(text, voice, rate)
        audio = np.concatenate([silence(LEAD_S), speech, silence(TAIL_S)])
        items.append(Item("complete", text, voice, rate, audio, LEAD_S + speech.size / RATE))
    return items


def frames(audio: np.ndarray) -> np.ndarray:
    usable = audio.size // FRAME * FRAME
    return audio[:usable].reshape(-1, FRAME)


# --- our policies -------------------------------------------------------------------------------


class Timed:
    """The end-of-turn model with each call's duration kept."""

    def __init__(self, model):
        self.model = model
        self.ms: list[float] = []

    def __call__(self, pcm: np.ndarray) -> float:
        start = time.perf_counter()
        prob = self.model.probability(pcm)
        self.ms.append((time.perf_counter() - start) * 1e3)
        return prob


def run_ours(policy, item: Item, probs: np.ndarray, score=None) -> dict:
    """Feed one item to a fresh policy, as ``DuplexSession._listen`` does; the first turn taken ends it."""
    from edgevoice.runtime.cascade.session import USER_MARGIN_S
    from edgevoice.runtime.turns import Decision, TurnState

    chunks = frames(item.audio)
    margin = max(1, int(USER_MARGIN_S * RATE / FRAME))
    heard_from: int | None = None  # first frame of the turn's audio (the margin before the onset included)
    scores = []
    for k, chunk in enumerate(chunks):
        now = (k + 1) * FRAME / RATE
        level = float(np.sqrt(np.mean(chunk * chunk)))
        decision = policy.update(now, float(probs[k]), level)
        if decision is Decision.USER_STARTED:
            heard_from = max(0, k - margin)
        elif decision is Decision.DISMISS:
            heard_from = None
        request = getattr(policy, "score_wanted", None)
        if decision is Decision.NONE and request is not None and score is not None:
            window = chunks[heard_from : k + 1].reshape(-1)
            prob = score(window)
            scores.append({"at_s": round(now, 3), "silence_ms": round(request.silence_ms, 1), "prob": round(prob, 4)})
            decision = policy.score(now, request, prob)
        if decision is Decision.END_OF_TURN:
            assert policy.state is TurnState.THINKING
            end = policy.turn_end
            return {"turn_s": round(now, 3), "by": end.by, "eot_prob": end.eot_prob, "scores": scores}
    return {"turn_s": None, "by": None, "eot_prob": None, "scores": scores}


# --- the peer: pipecat ---------------------------------------------------------------------------


class Pipecat:
    """pipecat's Silero VAD analyzer and LocalSmartTurnAnalyzerV3 with pipecat's defaults."""

    def __init__(self):
        import asyncio

        from loguru import logger

        logger.remove()  # pipecat logs every analysis at DEBUG
        from pipecat.audio.turn.smart_turn import base_smart_turn
        from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

        # The analyzer's buffer timestamps and its pre-speech cut follow the frames, not the wall clock.
        self.now = 0.0
        base_smart_turn.time = SimpleNamespace(monotonic=lambda: self.now, perf_counter=time.perf_counter)
        self.loop = asyncio.new_event_loop()
        self.analyzer = LocalSmartTurnAnalyzerV3(sample_rate=RATE)
        self.analyzer.set_sample_rate(RATE)
        self.ms: list[float] = []

    def vad(self):
        from pipecat.audio.vad.silero import SileroVADAnalyzer

        vad = SileroVADAnalyzer(sample_rate=RATE)
        vad.set_sample_rate(RATE)
        return vad

    @property
    def settings(self) -> dict:
        from pipecat.audio.vad.vad_analyzer import VADParams

        p, t = VADParams(), self.analyzer.params
        return {"vad": {"confidence": p.confidence, "start_secs": p.start_secs, "stop_secs": p.stop_secs,
                        "min_volume": p.min_volume},
                "smart_turn": {"stop_secs": t.stop_secs, "pre_speech_ms": t.pre_speech_ms,
                               "max_duration_secs": t.max_duration_secs},
                "wait_for_transcript": False}

    def run(self, item: Item) -> dict:
        vad = self.vad()
        try:
            return self._run(item, vad)
        finally:
            self.analyzer.clear()
            self.loop.run_until_complete(vad.cleanup())  # its model thread

    def _run(self, item: Item, vad) -> dict:
        """The VAD's start/stop reach the strategy before the audio frame that raised them, as in pipecat."""
        from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
        from pipecat.audio.vad.vad_analyzer import VADState

        analyzer = self.analyzer
        analyzer.clear()
        speaking, vad_state, scores = False, VADState.QUIET, []
        pcm16 = np.clip(np.round(item.audio * 32767), -32768, 32767).astype(np.int16)
        for k, chunk in enumerate(frames(pcm16)):
            now = (k + 1) * FRAME / RATE
            self.now = now
            data = chunk.tobytes()
            state = self.loop.run_until_complete(vad.analyze_audio(data))
            complete = False
            if state != vad_state and state in (VADState.SPEAKING, VADState.QUIET):
                vad_state = state
                if state is VADState.SPEAKING:  # VADUserStartedSpeakingFrame
                    analyzer.update_vad_start_secs(vad.params.start_secs)
                    speaking = True
                else:  # VADUserStoppedSpeakingFrame: one score of the turn so far
                    speaking = False
                    verdict, metrics = self.loop.run_until_complete(analyzer.analyze_end_of_turn())
                    if metrics is not None:
                        self.ms.append(metrics.e2e_processing_time_ms)
                        scores.append({"at_s": round(now, 3), "prob": round(metrics.probability, 4)})
                    complete = verdict == EndOfTurnState.COMPLETE
                    by = "model"
            if not complete and analyzer.append_audio(data, speaking) == EndOfTurnState.COMPLETE:
                complete, by = True, "stop_secs"
            if complete:
                return {"turn_s": round(now, 3), "by": by, "eot_prob": scores[-1]["prob"] if scores else None,
                        "scores": scores}
        return {"turn_s": None, "by": None, "eot_prob": None, "scores": scores}


# --- outcome ----------------------------------------------------------------------------------


def judge(item: Item, outcome: dict, late_ms: float) -> dict:
    """Where the turn fell: before the end of speech (a cut-off), how long after it, or never."""
    turn = outcome["turn_s"]
    verdict = {"turn_s": turn, "by": outcome["by"], "eot_prob": outcome["eot_prob"], "scores": outcome["scores"]}
    if turn is None:
        return {**verdict, "result": "missed", "delay_ms": None}
    delay_ms = (turn - item.speech_end) * 1e3
    if delay_ms < 0:
        in_pause = item.pause is not None and item.pause[0] <= turn <= item.pause[1] + 0.3
        return {**verdict, "result": "cut_off_in_pause" if in_pause else "cut_off", "delay_ms": round(delay_ms, 1)}
    return {**verdict, "result": "late" if delay_ms > late_ms else "taken", "delay_ms": round(delay_ms, 1)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def summarize(items: list[Item], verdicts: list[dict]) -> dict:
    pause = [v for it, v in zip(items, verdicts) if it.kind == "pause"]
    complete = [v for it, v in zip(items, verdicts) if it.kind == "complete"]
    cut = [v for v in pause if v["result"].startswith("cut_off")]
    delays = [v["delay_ms"] for v in complete if v["delay_ms"] is not None and v["delay_ms"] >= 0]
    pause_delays = [v["delay_ms"] for v in pause if v["delay_ms"] is not None and v["delay_ms"] >= 0]
    median = statistics.median(delays) if delays else None
    rate = len(cut) / len(pause) if pause else None
    return {
        "pause_items": len(pause),
        "false_cutoffs": len(cut),
        "false_cutoffs_in_pause": sum(v["result"] == "cut_off_in_pause" for v in pause),
        "false_cutoff_rate": rate,
        "complete_items": len(complete),
        "complete_cut_early": sum(v["result"].startswith("cut_off") for v in complete),
        "endpoint_delay_ms": {"median": rounded(median), "p90": percentile(delays, 0.9), "n": len(delays)},
        "complete_taken_within_ms": {str(limit): sum(d <= limit for d in delays) for limit in (300, 500, 1000)},
        "pause_items_endpoint_delay_ms": {"median": rounded(statistics.median(pause_delays) if pause_delays else None),
                                          "p90": percentile(pause_delays, 0.9), "n": len(pause_delays)},
        "late": {"pause": sum(v["result"] == "late" for v in pause),
                 "complete": sum(v["result"] == "late" for v in complete)},
        "missed": {"pause": sum(v["result"] == "missed" for v in pause),
                   "complete": sum(v["result"] == "missed" for v in complete)},
        "turn_taken_by": {str(by): sum(v["by"] == by for v in verdicts) for by in {v["by"] for v in verdicts}},
        "meets_aims": {"false_cutoffs_le_5pct": rate is not None and rate <= 0.05,
                       "median_delay_le_300ms": median is not None and median <= 300.0},
    }


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()}, {model}, {os.cpu_count()} cores"


def tool_version(command: list[str]) -> str:
    """The first version-like word of a tool's ``--version`` line."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    words = (done.stdout or done.stderr).split()
    return next((w.lstrip("v") for w in words if w.lstrip("v")[:1].isdigit()), " ".join(words[:4]))


# --- main -----------------------------------------------------------------------------------------


def run(package: str, pause_items: int, complete_items: int, peer: bool, late_ms: float = 1000.0) -> dict:
    import onnxruntime

    from edgevoice.manifest import read_manifest
    from edgevoice.runtime.cascade.turn import EndOfTurnModel
    from edgevoice.runtime.turns import SemanticTurnPolicy, TurnOptions, VadTurnPolicy
    from edgevoice.runtime.vad import VadPipeline

    manifest = read_manifest(package)
    vad = VadPipeline(manifest)
    model = EndOfTurnModel.from_manifest(manifest)
    if model is None:
        raise SystemExit(f"{package} has no end-of-turn model (component 'turn'): export a package that has one")
    if model.sample_rate != RATE or vad.chunk_samples != FRAME:
        raise SystemExit(f"expected {RATE} Hz and {FRAME}-sample VAD frames, "
                         f"got {model.sample_rate} Hz and {vad.chunk_samples}")
    timed = Timed(model)
    timed(np.zeros(RATE, np.float32))  # warm-up, not counted
    timed.ms.clear()

    items = build_set(pause_items, complete_items)
    policies = {
        "vad_600ms": lambda: VadTurnPolicy(TurnOptions(endpoint_silence_ms=600.0)),
        "vad_300ms": lambda: VadTurnPolicy(TurnOptions(endpoint_silence_ms=300.0)),
        "semantic": lambda: SemanticTurnPolicy(TurnOptions()),
        # The same model asked once per silence, as pipecat asks it: no re-checks before eot_max_silence_ms.
        "semantic_one_check": lambda: SemanticTurnPolicy(TurnOptions(eot_recheck_ms=ONE_CHECK_RECHECK_MS)),
    }
    verdicts: dict[str, list[dict]] = {name: [] for name in policies}
    pipecat = Pipecat() if peer else None
    if pipecat is not None:
        verdicts["pipecat_smart_turn_v3"] = []
    for item in items:
        probs = vad.probabilities(item.audio, RATE)
        for name, make in policies.items():
            outcome = run_ours(make(), item, probs, timed if name.startswith("semantic") else None)
            verdicts[name].append(judge(item, outcome, late_ms))
        if pipecat is not None:
            verdicts["pipecat_smart_turn_v3"].append(judge(item, pipecat.run(item), late_ms))

    versions = {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
                "espeak-ng": tool_version(["espeak-ng", "--version"]), "sox": tool_version(["sox", "--version"])}
    if pipecat is not None:
        from importlib.metadata import version

        versions["pipecat-ai"] = version("pipecat-ai")
    options = TurnOptions()
    ours_threads = getattr(getattr(model.runner, "options", None), "threads", None)
    report = {
        "bench": "turn_taking",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
        "package": str(package),
        "frame_ms": FRAME / RATE * 1e3,
        "late_ms": late_ms,
        "aims": {"false_cutoff_rate_max": 0.05, "median_endpoint_delay_ms_max": 300.0},
        "settings": {
            "semantic": {k: getattr(options, k) for k in ("eot_first_check_ms", "eot_threshold", "eot_recheck_ms",
                                                          "eot_max_silence_ms", "threshold", "min_level")},
            **({"pipecat_smart_turn_v3": pipecat.settings} if pipecat is not None else {}),
        },
        "set": {"pause_items": sum(i.kind == "pause" for i in items),
                "complete_items": sum(i.kind == "complete" for i in items),
                "voices": sorted({f"{i.voice} -s {i.rate}" for i in items}),
                "pause_s": sorted({round(pause_seconds(k), 1) for k in range(sum(i.kind == 'pause' for i in items))}),
                "lead_s": LEAD_S, "tail_s": TAIL_S},
        "score_cost_ms": {
            "edgevoice_turn_model": {"median": statistics.median(timed.ms) if timed.ms else None,
                                     "p90": percentile(timed.ms, 0.9), "n": len(timed.ms), "threads": ours_threads},
            **({"pipecat_smart_turn_v3": {"median": statistics.median(pipecat.ms) if pipecat.ms else None,
                                          "p90": percentile(pipecat.ms, 0.9), "n": len(pipecat.ms), "threads": 1}}
               if pipecat is not None else {}),
        },
        "results": {name: summarize(items, v) for name, v in verdicts.items()},
        "items": [{**item.summary(), "policies": {name: verdicts[name][k] for name in verdicts}}
                  for k, item in enumerate(items)],
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="engines/cpu", help="cascade package with the 'vad' and 'turn' components")
    parser.add_argument("--pause-items", type=int, default=len(PAUSE_ITEMS))
    parser.add_argument("--complete-items", type=int, default=len(COMPLETE_ITEMS))
    parser.add_argument("--no-peer", action="store_true", help="skip pipecat's analyzer")
    parser.add_argument("--late-ms", type=float, default=1000.0, help="an endpoint delay above this is a late turn")
    parser.add_argument("--out", help="write the JSON here (default: benchmarks/results/ if it exists, else stdout)")
    args = parser.parse_args()
    if not 0 < args.pause_items <= len(PAUSE_ITEMS) or not 0 < args.complete_items <= len(COMPLETE_ITEMS):
        parser.error(f"--pause-items must be 1..{len(PAUSE_ITEMS)} and --complete-items 1..{len(COMPLETE_ITEMS)}")

    report = run(args.package, args.pause_items, args.complete_items, peer=not args.no_peer, late_ms=args.late_ms)
    text = json.dumps(report, indent=2)
    out = Path(args.out) if args.out else None
    results_dir = Path(__file__).resolve().parent / "results"
    if out is None and results_dir.is_dir():
        out = results_dir / f"turn_taking_{report['date']}.json"
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)
    for name, r in report["results"].items():
        d = r["endpoint_delay_ms"]
        print(f"{name}: false cut-offs {r['false_cutoffs']}/{r['pause_items']}, "
              f"delay median {d['median']} p90 {d['p90']} ms, late {r['late']}, missed {r['missed']}, "
              f"early on complete {r['complete_cut_early']}", file=sys.stderr)


if __name__ == "__main__":
    main()
