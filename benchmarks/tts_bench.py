"""TTS benchmark: edgevoice's Piper path against the piper-tts runtime, same voice, same machine.

Measures, for the joe voice on CPU:
- real-time factor (synthesis seconds / audio seconds) of our path (espeak-ng subprocess +
  rewritten graph on onnxruntime, ``--threads`` intra-op threads), over a few sentences;
- time to first audio of a 3-sentence reply (``TtsSession.stream``: the first phrase only) and
  the time for the whole reply;
- the same numbers for the piper-tts package (GPL-3.0) if an interpreter that has it is given
  with ``--piper-python``. It runs in that subprocess, so edgevoice never imports it; the
  subprocess also returns piper's phoneme ids and its zero-noise audio, and we report whether
  our ids are identical and how far our zero-noise audio is from piper's.

    python benchmarks/tts_bench.py --out bench_tts.json [--piper-python /path/venv/bin/python]
    python benchmarks/tts_bench.py --voice kokoro --out bench_tts_kokoro.json   # Kokoro-82M, ours only

Set up piper-tts for the comparison (benchmark only) without touching the main environment:
    python -m venv --system-site-packages /tmp/piper_venv
    /tmp/piper_venv/bin/pip install --no-deps piper-tts==1.8.0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please turn on the kitchen lights.",
    "I would like a cup of coffee, please.",
    "The train leaves from the north station in ten minutes, so we should hurry.",
]
REPLY = (
    "Sure, I can help with that. The kitchen lights are now on, and the heating is set to twenty "
    "degrees. Let me know if you would like anything else."
)
# A reply whose first sentence is long: what the first-phrase cut at a comma is for.
LONG_OPENING = (
    "Well, after looking at the forecast for the coming week, it seems that the weather will stay "
    "sunny and warm, with a light breeze in the afternoons. Enjoy it. Tell me if you need more."
)
REPEATS = 5  # best of N after warm-up
# onnxruntime grows its memory arena for each new output length; the first few calls of a fresh
# session are up to 2x slower. Both runtimes get the same warm-up; the cold first call is reported.
WARMUP_ROUNDS = 2

# Runs inside the piper-tts interpreter: times synthesis and returns ids + zero-noise audio.
_PIPER_SCRIPT = r"""
import json, sys, time
import numpy as np
from piper import PiperVoice, SynthesisConfig
model, sentences, reply, repeats, warmup, out = sys.argv[1:7]
sentences = json.loads(sentences); repeats = int(repeats)
t0 = time.perf_counter(); voice = PiperVoice.load(model); load_s = time.perf_counter() - t0
def best(fn):
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); result = fn(); times.append(time.perf_counter() - t)
    return min(times), result
def whole(text):
    return np.concatenate([c.audio_float_array for c in voice.synthesize(text)])
t0 = time.perf_counter(); whole(sentences[0]); cold_s = time.perf_counter() - t0
for _ in range(int(warmup)):
    for s in sentences + [reply]:
        whole(s)
synth_s, audio_s = 0.0, 0.0
for s in sentences:
    t, audio = best(lambda: whole(s)); synth_s += t; audio_s += len(audio) / voice.config.sample_rate
def first():
    return next(iter(voice.synthesize(reply)))
ttfa, _ = best(first)
long_ttfa, _ = best(lambda: next(iter(voice.synthesize(sys.argv[7]))))
reply_s, _ = best(lambda: whole(reply))
quiet = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
zero = {s: np.concatenate([c.audio_float_array for c in voice.synthesize(s, syn_config=quiet)]).tolist() for s in sentences}
ids = {s: [voice.phonemes_to_ids(p) for p in voice.phonemize(s)] for s in sentences}
json.dump({"load_s": load_s, "cold_first_s": cold_s, "synth_s": synth_s, "audio_s": audio_s, "ttfa_s": ttfa, "long_opening_ttfa_s": long_ttfa, "reply_s": reply_s,
           "ids": ids, "zero_noise_audio": zero}, open(out, "w"))
"""


def best_of(fn, repeats: int = REPEATS):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def open_voice(name: str, threads: int, workdir: Path):
    """(voice, export seconds, load seconds) for "joe" (Piper) or "kokoro" (Kokoro-82M float)."""
    from edgevoice.backends.ort import OrtRunner
    from edgevoice.recipes.cascade.voices import voice_choice
    from edgevoice.runtime.cascade.kokoro import KokoroVoice
    from edgevoice.runtime.cascade.tts import PiperVoice

    start = time.perf_counter()
    component = voice_choice(name).build(workdir, False)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    runner = OrtRunner(component.manifest_entry(), component.onnx_path, threads=threads)
    if voice_choice(name).engine == "kokoro":
        with np.load(component.files["tts_styles.npz"], allow_pickle=False) as archive:
            voice = KokoroVoice(runner, archive["styles"])
    else:
        voice = PiperVoice(runner)
    return voice, export_s, time.perf_counter() - start


def bench_edgevoice(threads: int, workdir: Path, voice_name: str = "joe") -> tuple[dict, object]:
    from edgevoice.runtime.cascade.tts import SynthesisOptions

    voice, export_s, load_s = open_voice(voice_name, threads, workdir)
    cold_s, _ = best_of(lambda: voice.session(seed=0).synthesize(SENTENCES[0]), repeats=1)
    for _ in range(WARMUP_ROUNDS):
        for text in SENTENCES + [REPLY]:
            voice.session(seed=0).synthesize(text)
    synth_s = audio_s = 0.0
    for sentence in SENTENCES:
        seconds, audio = best_of(lambda: voice.session(seed=0).synthesize(sentence))
        synth_s += seconds
        audio_s += len(audio) / voice.sample_rate
    ttfa_s, first = best_of(lambda: next(voice.session(seed=0).stream(REPLY)))
    reply_s, reply = best_of(lambda: voice.session(seed=0).synthesize(REPLY))
    uncut = SynthesisOptions(first_phrase_chars=0)
    long_cut_s, _ = best_of(lambda: next(voice.session(seed=0).stream(LONG_OPENING)))
    long_uncut_s, _ = best_of(lambda: next(voice.session(seed=0, options=uncut).stream(LONG_OPENING)))
    return {
        "export_s": export_s, "load_s": load_s, "cold_first_s": cold_s, "synth_s": synth_s, "audio_s": audio_s,
        "rtf": synth_s / audio_s, "ttfa_s": ttfa_s, "first_phrase_audio_s": len(first) / voice.sample_rate,
        "reply_s": reply_s, "reply_audio_s": len(reply) / voice.sample_rate,
        "long_opening_ttfa_s": long_cut_s, "long_opening_ttfa_uncut_s": long_uncut_s,
    }, voice


def bench_piper(python: str, threads: int, workdir: Path) -> dict:
    from edgevoice.weights.piper import joe_voice_paths

    out = workdir / "piper.json"
    # piper-tts opens onnxruntime with default SessionOptions (one intra-op thread per core) and
    # does not expose them; OMP_NUM_THREADS is set for its numpy, and the machine's core count
    # is reported so the comparison is read right.
    env_threads = {"OMP_NUM_THREADS": str(threads)}
    command = [python, "-c", _PIPER_SCRIPT, str(joe_voice_paths()[0]), json.dumps(SENTENCES), REPLY,
               str(REPEATS), str(WARMUP_ROUNDS), str(out), LONG_OPENING]
    subprocess.run(command, check=True, env={**os.environ, **env_threads})
    result = json.loads(out.read_text())
    result["rtf"] = result["synth_s"] / result["audio_s"]
    return result


def compare_with_piper(voice, piper: dict) -> dict:
    """Are our ids Piper's, and how close is our zero-noise audio to piper-tts's?"""
    from edgevoice.runtime.cascade.tts import SynthesisOptions, normalize_text, phoneme_ids, split_phrases

    same_ids, max_abs = {}, {}
    quiet = SynthesisOptions(noise_scale=0.0, noise_w=0.0)
    for sentence in SENTENCES:
        ours = [phoneme_ids(voice.phonemizer.phonemize(p), voice.id_map)[0] for p in split_phrases(normalize_text(sentence)[0])]
        same_ids[sentence] = ours == piper["ids"][sentence]
        a = voice.session(options=quiet).synthesize(sentence)
        b = np.asarray(piper["zero_noise_audio"][sentence], dtype=np.float32)
        max_abs[sentence] = float(np.max(np.abs(a - b))) if len(a) == len(b) else float("nan")
    return {"same_phoneme_ids": same_ids, "zero_noise_max_abs_diff": max_abs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--piper-python", help="python of an environment with piper-tts installed")
    parser.add_argument("--out", type=Path, default=Path("tts_bench.json"))
    parser.add_argument("--voice", choices=("joe", "kokoro"), default="joe",
                        help="the voice to measure (the piper-tts comparison exists for joe only)")
    args = parser.parse_args()
    if args.piper_python and args.voice != "joe":
        parser.error("--piper-python compares the joe voice with piper-tts; drop it for --voice kokoro")
    with tempfile.TemporaryDirectory() as tmp:
        ours, voice = bench_edgevoice(args.threads, Path(tmp), args.voice)
        report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
                  "python": sys.version.split()[0], "threads": args.threads, "cpu_count": os.cpu_count(),
                  "voice": args.voice, "edgevoice": ours}
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
        if args.piper_python:
            piper = bench_piper(args.piper_python, args.threads, Path(tmp))
            report["piper_tts"] = {k: v for k, v in piper.items() if k not in ("ids", "zero_noise_audio")}
            report["vs_piper"] = compare_with_piper(voice, piper)
            report["rtf_ratio_ours_over_piper"] = ours["rtf"] / report["piper_tts"]["rtf"]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
