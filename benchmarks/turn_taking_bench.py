"""Turn-taking on the virtual clock: thinking pauses cut off vs the delay before a finished turn is taken.

The same espeak-ng audio goes, frame by frame (512 samples at 16 kHz, 32 ms), through each policy:
the VAD alone (``VadTurnPolicy``, 600 ms and 300 ms endpoints), ``SemanticTurnPolicy`` with the
package's end-of-turn model (each score request answered in the frame it is made; also with the
re-checks turned off, one score per silence; and with the words' vote, the session's default:
Whisper and the LLM score the transcript at the speculation point, and the vote counts only once
their measured compute has passed), and the peer, pipecat's ``LocalSmartTurnAnalyzerV3``
behind pipecat's own Silero VAD analyzer, driven the way pipecat's
``TurnAnalyzerUserTurnStopStrategy`` drives it (one score when the VAD reports a stop
after ``stop_secs``, the analyzer's own silence timeout otherwise; ``wait_for_transcript=False``,
so no STT wait is added). Apart from the words' compute, no wall clock decides anything: pipecat's analyzer reads a
virtual ``time.monotonic``.

Two kinds of item, built at run time (espeak-ng voices and rates varied, sox resampling without
dither): "pause" items, a sentence with a 0.7-1.5 s thinking pause in the middle, and "complete"
items, a whole question or statement. Each item: 0.5 s of silence, the speech, 2.5 s of silence.
The sentences come from ``benchmarks/turn_taking_sets.py``: set "a" (the default) is the one the
defaults were tuned on, set "b" (``--espeak-set b``) is held out to check a change on.

    python benchmarks/turn_taking_bench.py [--package engines/cpu] [--espeak-set a|b] [--pause-items N] [--complete-items N]
        [--no-peer] [--no-words] [--real-speech [--real-recordings beckett.wav,two_cities.wav]]

``--real-speech`` adds human read speech, cut the same way into pause and complete items (see
``benchmarks/turn_taking_real.py``: read prosody, pauses stretched by inserted silence); each item
has a ``source`` ("espeak" or the recording), and ``results_by_source`` gives the results per policy
for the espeak and the real items apart (``results``: all of them together).

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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's own modules beside it

from turn_taking_score import judge, percentile, results_by_source, summarize  # noqa: E402
from turn_taking_sets import ESPEAK_SETS, EspeakSet  # noqa: E402

RATE = 16000
FRAME = 512  # one VAD frame: 32 ms
LEAD_S = 0.5
TAIL_S = 2.5
VOICED = 1e-3  # |sample| above this is part of espeak's speech (its silence is digital zero)
ONE_CHECK_RECHECK_MS = 60_000.0  # longer than any silence here: the first score is the only one

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
    source: str = "espeak"  # or the recording a real item was cut from (benchmarks/turn_taking_real.py)
    detail: dict = field(default_factory=dict)  # a real item's sample spans and transcripts

    def summary(self) -> dict:
        out = {"kind": self.kind, "source": self.source, "text": self.text, "voice": self.voice, "rate": self.rate,
               "speech_end_s": round(self.speech_end, 3)}
        if self.pause:
            out["pause_s"] = [round(self.pause[0], 3), round(self.pause[1], 3)]
        if self.detail:
            out["detail"] = self.detail
        return out


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * RATE)), np.float32)


def pause_seconds(index: int) -> float:
    """0.7 to 1.5 s in 0.1 s steps, every value once per nine items."""
    return 0.7 + 0.1 * ((index * 4) % 9)


def build_set(espeak: EspeakSet, pause_items: int, complete_items: int) -> list[Item]:
    items, voices = [], espeak.voices
    for i, (first, second) in enumerate(espeak.pause[:pause_items]):
        voice, rate = voices[i % len(voices)]
        a, b = speak(first, voice, rate), speak(second, voice, rate)
        gap, lead = silence(pause_seconds(i)), silence(LEAD_S)
        pause_start = (lead.size + a.size) / RATE
        pause_end = pause_start + gap.size / RATE
        audio = np.concatenate([lead, a, gap, b, silence(TAIL_S)])
        items.append(Item("pause", f"{first} ... {second}", voice, rate, audio, pause_end + b.size / RATE,
                          (pause_start, pause_end)))
    for i, text in enumerate(espeak.complete[:complete_items]):
        voice, rate = voices[(i + 3) % len(voices)]
        speech = speak(text, voice, rate)
        audio = np.concatenate([silence(LEAD_S), speech, silence(TAIL_S)])
        items.append(Item("complete", text, voice, rate, audio, LEAD_S + speech.size / RATE))
    return items


def build_real(vad, asr, recordings: list[str]) -> list[Item]:
    """Human read speech cut into pause and complete items (``benchmarks/turn_taking_real.py``)."""
    from turn_taking_real import build_real_set

    made = build_real_set(vad, lambda pcm: asr.transcribe(pcm, RATE).text, recordings)
    return [Item(r.kind, r.text, "human reader", 0, r.audio, r.speech_end, r.pause, r.source, r.detail) for r in made]


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


class Words:
    """The words' vote as a session makes it (``runtime/cascade/text_turn``): the package's Whisper
    on the turn's audio so far, drafted by the turn's previous transcript, then the LLM's
    end-of-turn probability of the transcript; each call's duration is kept, and the vote reaches
    the policy that much later (compute included). The session also drafts from its partial
    transcripts, which this does not make, so its votes come a little later here."""

    def __init__(self, package: str, speculate_after_ms: float):
        from edgevoice.runtime.cascade.pipeline import CascadePipeline
        from edgevoice.runtime.cascade.thinking import CascadeThinker
        from edgevoice.runtime.workers import Worker

        inline = Worker("think", False, lambda stage, exc: None)
        self.pipeline = CascadePipeline(package)
        self.thinker = CascadeThinker(self.pipeline, inline, inline, lambda *a, **k: None, 22050)
        self.speculate_after_ms = speculate_after_ms
        self.ms: list[float] = []
        self.turn = 0  # one per item: a new item's transcript is not drafted by the last item's

    def new_turn(self) -> None:
        self.turn += 1

    def __call__(self, pcm: np.ndarray) -> tuple[str, float | None, float]:
        """(transcript, probability or None, seconds it took)."""
        start = time.perf_counter()
        transcript = self.thinker.transcribe_turn(pcm, RATE, self.turn).text.strip()
        prob = self.thinker.words_end_probability(transcript)
        seconds = time.perf_counter() - start
        self.ms.append(seconds * 1e3)
        return transcript, prob, seconds


def run_ours(policy, item: Item, probs: np.ndarray, score=None, words: Words | None = None) -> dict:
    """Feed one item to a fresh policy, as ``DuplexSession._listen`` does; the first turn taken ends it."""
    from edgevoice.runtime.cascade.session import USER_MARGIN_S
    from edgevoice.runtime.turns import Decision, TurnState

    chunks = frames(item.audio)
    margin = max(1, int(USER_MARGIN_S * RATE / FRAME))
    heard_from: int | None = None  # first frame of the turn's audio (the margin before the onset included)
    scores = []
    votes: dict[float, dict] = {}  # speech end -> the words' vote for its silence (due at its "at_s")
    if words is not None:
        words.new_turn()
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
        if words is not None and decision is Decision.NONE and heard_from is not None:
            decision = _hear_words(policy, words, votes, now, chunks[heard_from : k + 1])
        if decision is Decision.END_OF_TURN:
            assert policy.state is TurnState.THINKING
            end = policy.turn_end
            return {"turn_s": round(now, 3), "by": end.by, "eot_prob": end.eot_prob, "scores": scores,
                    **({"words": list(votes.values())} if words is not None else {})}
    return {"turn_s": None, "by": None, "eot_prob": None, "scores": scores,
            **({"words": list(votes.values())} if words is not None else {})}


def _hear_words(policy, words: Words, votes: dict, now: float, heard: np.ndarray):
    """Start the words' vote once a silence reaches the speculation point; deliver it when due."""
    from edgevoice.runtime.turns import Decision, TurnState, elapsed_ms

    end = policy.last_speech
    if policy.state is TurnState.USER_SPEAKING and end is not None and end not in votes \
            and elapsed_ms(end, now) >= words.speculate_after_ms:
        transcript, prob, seconds = words(heard.reshape(-1))
        votes[end] = {"at_s": round(now + seconds, 3), "transcript": transcript,
                      "prob": None if prob is None else round(prob, 5), "compute_ms": round(seconds * 1e3, 1),
                      "delivered": False}
    decision = Decision.NONE
    for speech_end, vote in votes.items():
        if not vote["delivered"] and now >= vote["at_s"]:
            vote["delivered"] = True
            verdict = policy.text_score(now, speech_end, vote["prob"])
            decision = verdict if verdict is not Decision.NONE else decision
    return decision


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


def run(package: str, pause_items: int, complete_items: int, peer: bool, late_ms: float = 1000.0,
        with_words: bool = True, real_speech: list[str] | None = None, espeak_set: str = "a") -> dict:
    import onnxruntime

    from edgevoice.manifest import read_manifest
    from edgevoice.runtime.cascade.session import SessionOptions
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

    items = build_set(ESPEAK_SETS[espeak_set], pause_items, complete_items)
    policies = {
        "vad_600ms": lambda: VadTurnPolicy(TurnOptions(endpoint_silence_ms=600.0)),
        "vad_300ms": lambda: VadTurnPolicy(TurnOptions(endpoint_silence_ms=300.0)),
        "semantic": lambda: SemanticTurnPolicy(TurnOptions()),
        # The same model asked once per silence, as pipecat asks it: no re-checks before eot_max_silence_ms.
        "semantic_one_check": lambda: SemanticTurnPolicy(TurnOptions(eot_recheck_ms=ONE_CHECK_RECHECK_MS)),
        # The session's default: the audio model and the words' vote (Whisper + LLM at the speculation
        # point, delivered after their measured compute).
        "semantic_words": lambda: SemanticTurnPolicy(TurnOptions(), text_gate=True),
    }
    words = Words(package, SessionOptions().speculate_after_ms) if with_words else None
    if words is None:
        del policies["semantic_words"]
    if real_speech:  # labelled by the package's Whisper: the words' vote's pipeline when it is open
        from edgevoice.runtime.cascade.pipeline import CascadePipeline

        items += build_real(vad, words.pipeline.asr if words is not None else CascadePipeline(package).asr, real_speech)
    verdicts: dict[str, list[dict]] = {name: [] for name in policies}
    if peer:
        from turn_taking_peer import Pipecat
    pipecat = Pipecat(RATE, FRAME) if peer else None
    if pipecat is not None:
        verdicts["pipecat_smart_turn_v3"] = []
    for item in items:
        probs = vad.probabilities(item.audio, RATE)
        for name, make in policies.items():
            outcome = run_ours(make(), item, probs, timed if name.startswith("semantic") else None,
                               words if name == "semantic_words" else None)
            verdicts[name].append(judge(item, outcome, late_ms))
        if pipecat is not None:
            verdicts["pipecat_smart_turn_v3"].append(judge(item, pipecat.run(item.audio), late_ms))

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
                                                          "eot_max_silence_ms", "threshold", "min_level",
                                                          "text_eot_threshold", "text_eot_sure",
                                                          "text_min_silence_ms", "text_sure_min_silence_ms")},
            **({"semantic_words": {"speculate_after_ms": words.speculate_after_ms}} if words is not None else {}),
            **({"pipecat_smart_turn_v3": pipecat.settings} if pipecat is not None else {}),
        },
        "set": {"espeak_set": espeak_set,
                "pause_items": sum(i.kind == "pause" for i in items),
                "complete_items": sum(i.kind == "complete" for i in items),
                "voices": sorted({f"{i.voice} -s {i.rate}" for i in items if i.source == "espeak"}),
                "pause_s": sorted({round(i.pause[1] - i.pause[0], 1) for i in items if i.pause}),
                "lead_s": LEAD_S, "tail_s": TAIL_S,
                "by_source": {src: {kind: sum(i.source == src and i.kind == kind for i in items)
                                    for kind in ("pause", "complete")} for src in dict.fromkeys(i.source for i in items)}},
        "score_cost_ms": {
            "edgevoice_turn_model": {"median": statistics.median(timed.ms) if timed.ms else None,
                                     "p90": percentile(timed.ms, 0.9), "n": len(timed.ms), "threads": ours_threads},
            **({"edgevoice_words_vote": {"median": statistics.median(words.ms) if words.ms else None,
                                         "p90": percentile(words.ms, 0.9), "n": len(words.ms),
                                         "what": "Whisper on the turn so far + one LLM prefill"}}
               if words is not None else {}),
            **({"pipecat_smart_turn_v3": {"median": statistics.median(pipecat.ms) if pipecat.ms else None,
                                          "p90": percentile(pipecat.ms, 0.9), "n": len(pipecat.ms), "threads": 1}}
               if pipecat is not None else {}),
        },
        "results": {name: summarize(items, v) for name, v in verdicts.items()},
        "results_by_source": results_by_source(items, verdicts),
        "items": [{**item.summary(), "policies": {name: verdicts[name][k] for name in verdicts}}
                  for k, item in enumerate(items)],
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="engines/cpu", help="cascade package with the 'vad' and 'turn' components")
    parser.add_argument("--espeak-set", choices=sorted(ESPEAK_SETS), default="a",
                        help="which sentences (benchmarks/turn_taking_sets.py): 'a' tuned on, 'b' held out")
    parser.add_argument("--pause-items", type=int, help="the first N pause items of the set (default: all)")
    parser.add_argument("--complete-items", type=int, help="the first N complete items of the set (default: all)")
    parser.add_argument("--no-peer", action="store_true", help="skip pipecat's analyzer")
    parser.add_argument("--no-words", action="store_true", help="skip the words' vote (Whisper + LLM per silence)")
    parser.add_argument("--real-speech", action="store_true",
                        help="add human read speech (pip install --no-deps moonshine-voice==0.1.5)")
    parser.add_argument("--real-recordings", default="beckett.wav,two_cities.wav,endgame_nagg_nell.wav,clone-test.wav",
                        help="with --real-speech: which of the wheel's recordings, comma-separated")
    parser.add_argument("--late-ms", type=float, default=1000.0, help="an endpoint delay above this is a late turn")
    parser.add_argument("--out", help="write the JSON here (default: benchmarks/results/ if it exists, else stdout)")
    args = parser.parse_args()
    espeak = ESPEAK_SETS[args.espeak_set]
    pause_items = len(espeak.pause) if args.pause_items is None else args.pause_items
    complete_items = len(espeak.complete) if args.complete_items is None else args.complete_items
    if not 0 < pause_items <= len(espeak.pause) or not 0 < complete_items <= len(espeak.complete):
        parser.error(f"set {args.espeak_set!r}: --pause-items must be 1..{len(espeak.pause)} "
                     f"and --complete-items 1..{len(espeak.complete)}")

    report = run(args.package, pause_items, complete_items, peer=not args.no_peer, late_ms=args.late_ms,
                 with_words=not args.no_words,
                 real_speech=args.real_recordings.split(",") if args.real_speech else None, espeak_set=args.espeak_set)
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
    for source, results in [("all", report["results"])] + list(report["results_by_source"].items()):
        print(f"-- {source} items", file=sys.stderr)
        print_results(results)


def print_results(results: dict) -> None:
    for name, r in results.items():
        d = r["endpoint_delay_ms"]
        print(f"{name}: false cut-offs {r['false_cutoffs']}/{r['pause_items']}, "
              f"delay median {d['median']} p90 {d['p90']} ms, late {r['late']}, missed {r['missed']}, "
              f"early on complete {r['complete_cut_early']}", file=sys.stderr)


if __name__ == "__main__":
    main()
