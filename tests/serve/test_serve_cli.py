"""`edgevoice client --input ... --output ...` against a running `edgevoice serve` process; Ctrl-C stops it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from conftest import espeak

pytestmark = pytest.mark.slow
RATE = 16000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def edgevoice(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgevoice.cli.main", *args]


@pytest.fixture(scope="module")
def served(cascade_package):
    port = free_port()
    process = subprocess.Popen(edgevoice("serve", "--package", str(cascade_package.directory), "--port", str(port),
                                         "--max-sessions", "1"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line or process.poll() is None, process.stderr.read()
        lines.append(line)
        if line.strip().startswith("Ctrl-C"):
            break
    token = next(line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("token:"))
    yield port, token, "".join(lines), process
    if process.poll() is None:
        process.kill()


def test_serve_prints_where_to_connect(served):
    port, token, printed, _ = served
    assert f"http://127.0.0.1:{port}/?token={token}" in printed and f"ws://127.0.0.1:{port}/ws" in printed
    assert "at most 1 at once" in printed and len(token) >= 16


def test_client_streams_a_recording_and_writes_what_the_agent_said(served, tmp_path):
    port, token, _, _ = served
    spoken = espeak("What is the capital of France?")
    question = np.concatenate([np.zeros(8000, np.float32), spoken, np.zeros(8000, np.float32)])
    soundfile.write(tmp_path / "question.wav", question, RATE)
    said, events = tmp_path / "said.wav", tmp_path / "events.jsonl"
    done = subprocess.run(edgevoice("client", "--url", f"ws://127.0.0.1:{port}", "--token", token, "--input",
                                    str(tmp_path / "question.wav"), "--output", str(said), "--events", str(events),
                                    "--json"), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    [turn] = result["turns"]
    assert "France" in turn["transcript"] and "Paris" in turn["reply"]
    assert result["summary"]["replies"] == 1 and result["summary"]["reason"] == "bye"
    audio, rate = soundfile.read(said, dtype="float32")
    # Up to the last voiced sample: sure words may take the turn 0.4 s into the silence that follows.
    question_end = (8000 + np.flatnonzero(np.abs(spoken) > 0.02)[-1]) / RATE
    assert rate == 24000 and np.abs(audio[: int(question_end * rate)]).max() < 0.01  # silent while the user spoke
    assert np.abs(audio[int(question_end * rate):]).max() > 0.05  # the answer is in it, after the question
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert kinds[0] == "connection" and "reply_text" in kinds and kinds[-1] == "session_end"


def test_a_wrong_token_is_one_line_and_exit_1(served, tmp_path):
    port, _, _, _ = served
    soundfile.write(tmp_path / "q.wav", np.zeros(RATE, np.float32), RATE)
    done = subprocess.run(edgevoice("client", "--url", f"ws://127.0.0.1:{port}", "--token", "wrong", "--input",
                                    str(tmp_path / "q.wav"), "--output", str(tmp_path / "said.wav")),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "HTTP 401" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_stops_the_server(served):
    _, _, _, process = served
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and "stopped" in out
