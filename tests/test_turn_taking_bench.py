"""benchmarks/turn_taking_bench.py on tiny sets: 2 pause + 2 complete items of set "a" with our
policies, and 1 + 1 of the held-out set "b" with the peer (pipecat's analyzer) and no words' vote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark's own modules
from turn_taking_sets import SET_B  # noqa: E402

FRAME_MS = 32.0
POLICIES = ("vad_600ms", "vad_300ms", "semantic", "semantic_one_check", "semantic_words")


@pytest.fixture(scope="module")
def report(cascade_package, tmp_path_factory) -> dict:
    assert "turn" in cascade_package.components, "the cascade package should carry the end-of-turn model"
    out = tmp_path_factory.mktemp("turn_taking") / "report.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/turn_taking_bench.py", "--package", str(cascade_package.directory),
         "--pause-items", "2", "--complete-items", "2", "--no-peer", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def peer_report(cascade_package, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("turn_taking_peer") / "report.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/turn_taking_bench.py", "--package", str(cascade_package.directory),
         "--espeak-set", "b", "--pause-items", "1", "--complete-items", "1", "--no-words", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def test_report_says_what_was_measured_and_where(report):
    assert report["bench"] == "turn_taking" and report["frame_ms"] == FRAME_MS
    assert {"onnxruntime", "numpy", "python", "espeak-ng", "sox"} <= set(report["versions"])
    assert "pipecat-ai" not in report["versions"] and set(report["results"]) == set(POLICIES)
    assert report["set"]["pause_items"] == 2 and report["set"]["complete_items"] == 2
    assert report["set"]["espeak_set"] == "a"
    assert report["aims"] == {"false_cutoff_rate_max": 0.05, "median_endpoint_delay_ms_max": 300.0}
    kinds = [item["kind"] for item in report["items"]]
    assert kinds == ["pause", "pause", "complete", "complete"]
    for item in report["items"][:2]:
        start, end = item["pause_s"]
        assert 0.7 - 1e-3 <= end - start <= 1.5 + 1e-3 and end < item["speech_end_s"]
        assert set(item["policies"]) == set(POLICIES)


def test_every_item_has_one_outcome_per_policy(report):
    for name, r in report["results"].items():
        counted = r["false_cutoffs"] + r["complete_cut_early"] + sum(r["missed"].values()) \
            + r["endpoint_delay_ms"]["n"] + r["pause_items_endpoint_delay_ms"]["n"]
        assert counted == 4, name
        assert r["false_cutoff_rate"] == r["false_cutoffs"] / 2
        delay = r["endpoint_delay_ms"]
        if delay["n"]:
            assert 0 <= delay["median"] <= delay["p90"]
        assert set(r["meets_aims"]) == {"false_cutoffs_le_5pct", "median_delay_le_300ms"}


def test_vad_endpoints_behave_as_configured(report):
    vad300, vad600 = report["results"]["vad_300ms"], report["results"]["vad_600ms"]
    # A 0.7 s or longer pause outlasts a 300 ms endpoint: the VAD alone takes the turn inside it.
    assert vad300["false_cutoffs_in_pause"] == 2
    # On complete items the turn comes one endpoint after the speech (a frame or two of VAD tail either way).
    for item in report["items"][2:]:
        for name, endpoint in (("vad_300ms", 300.0), ("vad_600ms", 600.0)):
            verdict = item["policies"][name]
            assert verdict["by"] == "vad" and endpoint - 2 * FRAME_MS <= verdict["delay_ms"] <= endpoint + 4 * FRAME_MS
    assert vad600["endpoint_delay_ms"]["median"] > vad300["endpoint_delay_ms"]["median"]


def test_semantic_policy_scores_and_ends_turns(report):
    cost = report["score_cost_ms"]["edgevoice_turn_model"]
    assert cost["n"] >= 4 and cost["median"] > 0
    settings = report["settings"]["semantic"]
    for item in report["items"]:
        verdict = item["policies"]["semantic"]
        assert verdict["scores"], "every turn of this set lasts long enough to be scored"
        first = verdict["scores"][0]
        assert settings["eot_first_check_ms"] <= first["silence_ms"] < settings["eot_first_check_ms"] + FRAME_MS
        assert all(0.0 <= s["prob"] <= 1.0 for s in verdict["scores"])
        assert verdict["by"] in ("model", "max_silence") and verdict["turn_s"] is not None
        if verdict["by"] == "model":
            assert verdict["eot_prob"] >= settings["eot_threshold"]


def test_the_words_vote_counts_only_after_its_compute(report):
    settings = report["settings"]
    speculate_s = settings["semantic_words"]["speculate_after_ms"] / 1000
    assert report["score_cost_ms"]["edgevoice_words_vote"]["n"] >= 4
    for item in report["items"]:
        verdict = item["policies"]["semantic_words"]
        assert verdict["words"], "every silence past the speculation point gets a vote"
        last = verdict["words"][-1]
        assert last["transcript"] and 0.0 <= last["prob"] <= 1.0 and last["compute_ms"] > 0
        if verdict["by"] in ("model", "words"):  # taken on the words' vote: never before it was due
            assert verdict["turn_s"] >= last["at_s"] and last["prob"] >= settings["semantic"]["text_eot_threshold"]
            assert last["at_s"] >= item["speech_end_s"] + speculate_s + last["compute_ms"] / 1000 - 0.1
    first_pause_vote = report["items"][0]["policies"]["semantic_words"]["words"][0]
    assert first_pause_vote["prob"] < settings["semantic"]["text_eot_threshold"]  # "I would like to know"


def test_the_peer_runs_on_the_held_out_set(peer_report):
    """The README's setup installs pipecat-ai --no-deps and the dev extra the three modules its
    analyzer imports: the peer must run, not be skipped."""
    assert peer_report["set"]["espeak_set"] == "b" and peer_report["versions"]["pipecat-ai"]
    assert set(peer_report["results"]) == {*POLICIES, "pipecat_smart_turn_v3"} - {"semantic_words"}
    assert [item["text"] for item in peer_report["items"]] == [" ... ".join(SET_B.pause[0]), SET_B.complete[0]]
    peer = peer_report["results"]["pipecat_smart_turn_v3"]
    counted = peer["false_cutoffs"] + peer["complete_cut_early"] + sum(peer["missed"].values()) \
        + peer["endpoint_delay_ms"]["n"] + peer["pause_items_endpoint_delay_ms"]["n"]
    assert counted == 2
    assert peer_report["score_cost_ms"]["pipecat_smart_turn_v3"]["n"] >= 1  # the analyzer was asked
    assert peer_report["settings"]["pipecat_smart_turn_v3"]["smart_turn"]["stop_secs"] > 0
