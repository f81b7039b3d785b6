"""Long conversations with the real engines on the virtual clock.

- Two minutes on a simulated sound card (the real device callback, pump and rings) with stalls
  injected at known times: every fault is counted once, as an ``xrun`` event and in the
  summary, and nothing else is.
- An hour on a ``FileIO`` (benchmarks/hour_bench.py, run as a user would): memory stays flat.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass

import pytest

from conftest import REPO, espeak
from edgevoice.audio.device_io import DeviceConfig
from edgevoice.audio.simulated import SimulatedDeviceIO
from edgevoice.audio.timeline import Timeline
from edgevoice.runtime import events as ev
from edgevoice.runtime.cascade.pipeline import CascadePipeline
from edgevoice.runtime.cascade.session import DuplexSession, SessionOptions

pytestmark = pytest.mark.slow
DEVICE_RATE, MIC_RATE, RING_S = 48000, 16000, 2.0
QUESTIONS = ((5.0, "What is the capital of France?"), (60.0, "How many legs does a spider have?"))


@dataclass(frozen=True)
class Stall:
    """A fault: who stops, when (device seconds) and for how long, and the xrun field it must raise."""

    who: str  # "callback" (audio thread), "pump" (feeds the speaker) or "listen" (reads the mic)
    at: float
    seconds: float

    @property
    def field(self) -> str:
        return {"callback": "device_xruns", "pump": "output_starved", "listen": "mic_samples_lost"}[self.who]


def stalls(answer_1_at: float) -> list[Stall]:
    """Each longer than what the stage's buffer holds: 2 hardware blocks (20 ms), the 40 ms device
    queue, the 2 s mic ring. One pump stall falls inside the first answer, so speech is cut."""
    return [Stall("pump", answer_1_at + 1.0, 0.3), Stall("callback", 20.0, 0.25), Stall("listen", 30.0, 3.0),
            Stall("callback", 45.0, 0.1), Stall("pump", 90.0, 0.5), Stall("listen", 100.0, 2.5)]


def run_with_stalls(package, seconds: float, faults: list[Stall]) -> tuple[DuplexSession, SimulatedDeviceIO]:
    line = Timeline(seconds, DEVICE_RATE)
    for at, question in QUESTIONS:
        line.place(at, espeak(question, DEVICE_RATE))
    config = DeviceConfig(device_rate=DEVICE_RATE, block_frames=480, buffer_seconds=RING_S, output_lead_seconds=0.04)
    io = SimulatedDeviceIO(line, config, mic_rate=MIC_RATE, speaker_rate=22050, keep_played_s=1.0)
    for fault in faults:
        if fault.who == "callback":
            io.stall_callbacks(fault.at, fault.seconds)
        elif fault.who == "pump":
            io.stall_pump(fault.at, fault.seconds)
    session = DuplexSession(CascadePipeline(package), io, SessionOptions(threaded=False))
    listen_stalls = sorted((f for f in faults if f.who == "listen"), key=lambda f: f.at)
    with io:
        while io.clock.now() < seconds:
            if listen_stalls and io.clock.now() >= listen_stalls[0].at:
                io.clock.advance(listen_stalls.pop(0).seconds)  # the loop reads nothing meanwhile
            if not session.step():
                break
    session.close()
    return session, io


def test_every_injected_device_fault_is_counted_once_and_nothing_else(cascade_package):
    answer_1_at = QUESTIONS[0][0] + len(espeak(QUESTIONS[0][1])) / MIC_RATE + 0.6  # the endpoint, roughly
    faults = stalls(answer_1_at)
    session, io = run_with_stalls(cascade_package.directory, 120.0, faults)
    xruns = session.events.history(ev.XRUN)
    print([(round(e.time, 3), e.data) for e in xruns])
    assert len(xruns) == len(faults), xruns  # one event per fault: none missed, none invented
    for fault, event in zip(sorted(faults, key=lambda f: f.at), xruns):
        assert fault.at <= event.time <= fault.at + fault.seconds + 0.2, (fault, event)
        assert event.data["kind"] == "device" and event.data[fault.field] > 0, (fault, event)
        assert sum(bool(event.data[k]) for k in ("device_xruns", "output_starved", "mic_samples_lost")) == 1, event
    summary = session.summary()
    assert summary["turns"] == 2 and summary["replies"] == 2 and summary["reply_gaps"] == 0
    assert summary["device_xruns"] == io.stats.input_overflows == io.stats.output_underflows == 2
    assert summary["device_output_starved"] == 2
    # What each stall outlasted its buffer by was lost (mic) or played as silence (speaker).
    lost_s = sum(f.seconds - RING_S for f in faults if f.who == "listen")
    assert abs(summary["mic_overrun_samples"] - lost_s * MIC_RATE) <= 2 * 1024
    assert summary["reference_overrun_samples"] == summary["mic_overrun_samples"]
    silent_s = sum(f.seconds - 0.04 for f in faults if f.who == "pump")
    assert abs(io.output_underrun_samples - silent_s * DEVICE_RATE) <= 2 * 480
    assert io.lost_blocks == sum(round(f.seconds * 100) - 2 for f in faults if f.who == "callback")
    [first_audio, _] = session.events.history(ev.FIRST_AUDIO)
    [done, _] = session.events.history(ev.AGENT_DONE)
    assert first_audio.time < faults[0].at < done.time  # the first pump stall cut into the answer


def test_one_hour_conversation_has_bounded_memory_and_no_lost_audio(cascade_package, tmp_path):
    out = tmp_path / "hour.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "hour_bench.py"), "--package", str(cascade_package.directory),
           "--minutes", "60", "--every", "300", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    print(json.dumps({k: result[k] for k in ("wall_s", "rss_mb_by_minute", "peak_rss_mb", "ms_per_20ms_while_listening")}))
    summary = result["summary"]
    assert summary["turns"] == 12 and summary["replies"] == 12  # a question every 5 minutes, each answered
    assert summary["session_seconds"] >= 3600
    # A FileIO has no device that could xrun (the test above covers that path); what it can
    # lose is checked here: gaps in the replies, overrun rings, repaired samples.
    for counter in ("reply_gaps", "mic_overrun_samples", "reference_overrun_samples", "nonfinite_samples"):
        assert summary[counter] == 0, counter
    assert not result["warnings"]
    rss = dict(result["rss_mb_by_minute"])
    # Memory reaches its working set while every input shape of the three questions' turns is met
    # (two rounds of the three, by minute ~31); after that it does not grow. RSS falls back and
    # rises again as allocations are returned to the system, so single samples are noisy: on one
    # host and package, five runs of two versions put the settled peak 1 to 53 MB over the warming
    # peak, and the settled median 20 MB under to 22 MB over it (three hours ended at 1317-1327 MB
    # after early peaks of 1290-1314 MB, BENCHMARKS.md). The arena growth this guards against was
    # +200 MB, sustained: it moves the median, which one noisy sample cannot.
    warming = [mb for minute, mb in rss.items() if minute < 36]
    settled = [mb for minute, mb in rss.items() if minute >= 36]
    assert len(settled) >= 4, rss
    assert statistics.median(settled) - max(warming) < 50 and max(settled) - max(warming) < 100, rss
