"""`edgevoice eval` end to end: examples/eval/ci.yaml played to the real cascade package.

The report's fields are checked against docs/eval.md both ways (every documented field is there,
every field there is documented), and the numbers against what the script holds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CI_SCRIPT = REPO / "examples" / "eval" / "ci.yaml"


def eval_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevoice.cli.main", "eval", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600, check=False)


def documented_fields() -> dict[str, set[str]]:
    """docs/eval.md's report tables: section heading -> the field names in its first column."""
    sections: dict[str, set[str]] = {}
    current = None
    in_report = False
    for line in (REPO / "docs" / "eval.md").read_text().splitlines():
        if line.startswith("## "):
            in_report = "eval.json" in line
        elif line.startswith("### ") and in_report:
            current = line[4:].strip().strip("`").split("`")[0].strip()
            sections[current] = set()
        elif in_report and current and (match := re.match(r"\| `(\w+)` \|", line)):
            sections[current].add(match.group(1))
    return sections


@pytest.fixture(scope="module")
def run(cascade_package, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    done = eval_cli("--package", str(cascade_package.directory), "--script", str(CI_SCRIPT), "--json",
                    "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), out


def test_the_report_has_exactly_the_documented_fields(run):
    report, out = run
    docs = documented_fields()
    assert set(report) == docs["top level"]
    assert set(report["summary"]) == docs["summary"]
    for conversation in report["conversations"]:
        assert set(conversation) == docs["each of"]
        assert set(conversation["summary"]) == docs["summary"]
        for name in ("agent_backchannels", "self_interruptions", "early_tool_calls"):
            assert set(conversation[name]) == docs[name], name
    for name in ("turns", "pauses", "barge_ins", "user_backchannels"):
        entries = [entry for c in report["conversations"] for entry in c[name]]
        assert entries, name  # the CI script has at least one of each
        for entry in entries:
            assert set(entry) == docs[f"{name}[]"], name
    assert json.loads((out / "eval.json").read_text())["summary"] == report["summary"]


def test_the_numbers_follow_the_script(run):
    report, _ = run
    summary = report["summary"]
    # ci.yaml: three questions and a barge-in (turns), one 1.2 s pause, one "mhm", three expected answers.
    assert (summary["turns"], summary["pauses"], summary["barge_ins"], summary["user_backchannels"]) == (4, 1, 1, 1)
    assert summary["answers_expected"] == 3 and summary["unanswered"] == 0
    assert summary["self_interruptions"] == 0 and summary["agent_backchannels"] == 0  # off in this script
    assert summary["early_tool_calls"] == 0  # no tools registered
    # The barge-in comes about a second into the answer: the agent was speaking and fell silent
    # within 150 ms (the bound tests/runtime/cascade/test_session.py holds the session to).
    assert summary["barge_ins_over_agent"] == 1 and summary["barge_in_time_to_silence_s"]["max"] <= 0.15
    onset, live = summary["response_onset_s"], summary["response_onset_estimated_live_s"]
    assert onset["n"] == 4 and 0.0 <= onset["median"] <= onset["p90"] < 2.5
    assert live["n"] >= 1 and live["median"] >= onset["median"]  # compute added back, never taken away
    first = report["conversations"][0]["turns"][0]
    assert "France" in first["transcript"] and first["correct"] is True  # "The capital of France is Paris."


def test_a_timeline_png_per_conversation(run):
    report, out = run
    for conversation in report["conversations"]:
        png = Path(conversation["timeline_png"])
        assert png == out / f"{conversation['name']}.png"
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a drawn plot, not an empty canvas


def test_a_bad_script_fails_before_the_engines_load(tmp_path):
    script = tmp_path / "bad.yaml"
    script.write_text("conversations: [{name: c, timeline: [{silence: abc}]}]\n")
    done = eval_cli("--package", str(tmp_path / "no-package"), "--script", str(script), "--out", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "conversations[0].timeline[0].silence: must be a number of seconds" in done.stderr
