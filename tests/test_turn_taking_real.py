"""benchmarks/turn_taking_real.py: human read speech cut into pause and complete items, and the
turn-taking bench run with ``--real-speech`` on one recording."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "turn_taking_real.py"
RATE = 16000
POLICIES = ("vad_600ms", "vad_300ms", "semantic", "semantic_one_check", "semantic_words")

_spec = importlib.util.spec_from_file_location("turn_taking_real", SCRIPT)
real = importlib.util.module_from_spec(_spec)
sys.modules["turn_taking_real"] = real  # its dataclasses look their module up while being made
_spec.loader.exec_module(real)

needs_recordings = pytest.mark.skipif(
    importlib.util.find_spec("moonshine_voice") is None,
    reason="moonshine-voice is not installed (it carries the recordings): "
           "pip install --no-deps moonshine-voice==0.1.5 (the README's main command installs it)",
)


def test_the_mark_after_a_span_is_read_from_the_two_spans_transcribed_together():
    joined = "It was the age of wisdom, it was the age of foolishness."
    assert real.mark_after("It was the age of wisdom.", joined) == ","
    assert real.mark_after("No matter.", "No matter. Try again.") == "."
    assert real.mark_after("Do you remember the day?", "Do you remember the day I went") == ""
    # Words heard differently in the two transcripts: the boundary is placed by the words that agree.
    assert real.mark_after("We will all go in direct to heaven.", "We were all going direct to heaven, we were") == ","
    assert real.mark_after("It was the epoch of belief.", "It was the epoch of relief, it was") == ","
    # Nothing after the span in the joined transcript: the label is unknown, not a sentence end.
    assert real.mark_after("Fail better.", "Fail better.") is None


@pytest.fixture(scope="module")
def beckett(cascade_package) -> list:
    from edgevoice.runtime.cascade.pipeline import CascadePipeline
    from edgevoice.runtime.vad import VadPipeline

    asr = CascadePipeline(cascade_package.directory).asr
    vad = VadPipeline(cascade_package)
    return real.build_real_set(vad, lambda pcm: asr.transcribe(pcm, RATE).text, ["beckett.wav"])


@needs_recordings
def test_real_set_has_both_kinds_with_their_transcripts(beckett):
    kinds = [item.kind for item in beckett]
    assert kinds.count("complete") >= 1 and kinds.count("pause") >= 1
    for item in beckett:
        assert item.source == "beckett.wav" and item.text.strip(" .,")
        assert all(text.strip() for _, _, text in item.detail["spans"])
        assert item.text.rstrip()[-1] in ".?!", "every item ends a sentence as the reading is labelled"
        # 0.5 s of digital silence before the speech, 2.5 s after it (and the recorded edge, <= 0.1 s).
        lead, tail_from = int(real.LEAD_S * RATE), round(item.speech_end * RATE)
        assert not item.audio[:lead].any() and np.abs(item.audio[lead : lead + 4800]).max() > 0.01
        assert 2.5 <= item.audio.size / RATE - item.speech_end <= 2.5 + real.EDGE_S + 1e-3
        assert np.abs(item.audio[tail_from + int(real.EDGE_S * RATE) + 1 :]).max() == 0.0


@needs_recordings
def test_pause_items_stretch_a_reader_pause_with_inserted_silence_only(beckett):
    for item in (i for i in beckett if i.kind == "pause"):
        start, end = item.pause
        detail = item.detail
        assert 0.7 - 1e-3 <= end - start <= 1.5 + 1e-3
        assert detail["inserted_s"] > 0 and abs(detail["reader_pause_s"] + detail["inserted_s"] - (end - start)) < 1e-3
        assert detail["mark_at_cut"] not in (".", "?", "!") and detail["before"] and detail["after"]
        # Speech on both sides of the pause, within it only the recorded pause's edges and zeros.
        before = item.audio[int(real.LEAD_S * RATE) : int(start * RATE)]
        after = item.audio[int(end * RATE) : int(item.speech_end * RATE)]
        assert np.abs(before).max() > 0.05 and np.abs(after).max() > 0.05
        inserted = round(detail["inserted_s"] * RATE)
        assert np.count_nonzero(item.audio[int(start * RATE) : int(end * RATE) + 1] == 0.0) >= inserted
        # The speech is the recording's samples, moved but never resampled.
        recording = real.load("beckett.wav")
        first, stop = detail["sentence_samples"]
        cut = detail["cut_sample"]
        lead = int(real.LEAD_S * RATE)
        np.testing.assert_array_equal(item.audio[lead : lead + cut - first], recording[first:cut])
        resumed = lead + cut - first + inserted
        np.testing.assert_array_equal(item.audio[resumed : resumed + stop - cut], recording[cut:stop])


@needs_recordings
def test_bench_runs_with_real_speech_and_reports_each_source(cascade_package, tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/turn_taking_bench.py", "--package", str(cascade_package.directory),
         "--pause-items", "1", "--complete-items", "1", "--no-peer", "--real-speech",
         "--real-recordings", "beckett.wav", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    sources = [item["source"] for item in report["items"]]
    assert sources[:2] == ["espeak", "espeak"] and set(sources[2:]) == {"beckett.wav"}
    by_source = report["set"]["by_source"]
    assert by_source["espeak"] == {"pause": 1, "complete": 1} and by_source["beckett.wav"]["pause"] >= 1
    assert set(report["results_by_source"]) == {"espeak", "real"}
    real_items = len(sources) - 2
    for name in POLICIES:
        mine, espeak, combined = (report["results_by_source"]["real"][name], report["results_by_source"]["espeak"][name],
                                  report["results"][name])
        assert espeak["pause_items"] == espeak["complete_items"] == 1
        assert mine["pause_items"] + mine["complete_items"] == real_items
        assert combined["false_cutoffs"] == mine["false_cutoffs"] + espeak["false_cutoffs"]
        assert combined["endpoint_delay_ms"]["n"] == mine["endpoint_delay_ms"]["n"] + espeak["endpoint_delay_ms"]["n"]
    for item in report["items"][2:]:
        assert item["voice"] == "human reader" and item["detail"]["spans"]
        assert set(item["policies"]) == set(POLICIES)
