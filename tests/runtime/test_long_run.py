"""An hour-long conversation on the virtual clock with the real engines: memory stays flat and
every audio problem is counted (benchmarks/hour_bench.py, run as a user would)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_one_hour_conversation_has_bounded_memory_and_no_lost_audio(cascade_package, tmp_path):
    out = tmp_path / "hour.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "hour_bench.py"), "--package", str(cascade_package.directory),
           "--minutes", "60", "--every", "300", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    print(json.dumps({k: result[k] for k in ("wall_s", "rss_mb_by_minute", "peak_rss_mb", "runtime_glue_ms_per_20ms")}))
    summary = result["summary"]
    assert summary["turns"] == 12 and summary["replies"] == 12  # a question every 5 minutes, each answered
    assert summary["session_seconds"] >= 3600
    # Every xrun accounted for: none may happen on the virtual clock, and the counters say so.
    for counter in ("device_xruns", "reply_gaps", "mic_overrun_samples", "reference_overrun_samples", "nonfinite_samples"):
        assert summary[counter] == 0, counter
    assert not result["warnings"]
    rss = dict(result["rss_mb_by_minute"])
    # onnxruntime's arenas grow until every input shape of the three questions' turns has been
    # seen (measured: two rounds of the three, by minute ~31); after that nothing may grow.
    settled = [mb for minute, mb in rss.items() if minute >= 36]
    assert len(settled) >= 4 and max(settled) - min(settled) < 32, rss
