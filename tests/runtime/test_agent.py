"""The library API: Agent over files, over an application's own audio stack, sync and asyncio."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO, espeak
from edgevoice import Agent, EdgevoiceError
from edgevoice.audio.app_io import AppAudioIO
from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev

pytestmark = pytest.mark.slow
RATE = 16000


@pytest.fixture(scope="module")
def agent(cascade_package):
    return Agent(cascade_package.directory)


def question() -> np.ndarray:
    return np.concatenate([np.zeros(8000, np.float32), espeak("What is the capital of France?"), np.zeros(16000, np.float32)])


def test_the_example_runs(cascade_package, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "embed_agent.py"), "--package",
                          str(cascade_package.directory), "--output", str(tmp_path / "heard.wav")],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "you:   What is the capital of France?" in out.stdout and "Paris" in out.stdout
    assert (tmp_path / "heard.wav").stat().st_size > 10_000


def test_run_on_a_recording_ends_when_the_agent_has_answered(agent):
    kinds = []
    unsubscribe = agent.on(None, lambda event: kinds.append(event.kind))
    session = agent.run(FileIO(question(), recording_rate=RATE))
    unsubscribe()
    assert kinds.count(ev.AGENT_DONE) == 1 and kinds[-2:] == [ev.AGENT_DONE, ev.SESSION_END]
    assert session.idle


def test_asyncio_run_and_event_stream(agent):
    async def converse():
        collected = []

        async def follow():
            async for event in agent.events():
                collected.append(event)

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0)  # subscribed before the conversation starts
        await agent.arun(FileIO(question(), recording_rate=RATE))
        await asyncio.wait_for(follower, timeout=10)
        return collected

    events = asyncio.run(converse())
    replies = [e.data["text"] for e in events if e.kind == ev.REPLY_TEXT]
    assert replies and "Paris" in replies[0]


def test_an_application_audio_stack_feeds_and_drains_the_agent(agent):
    """A robot's audio bus at 48 kHz stereo pushes the mic and pulls the speaker, in real time."""
    user = question()
    io = AppAudioIO(input_rate=48000, output_rate=48000)
    from edgevoice.audio.resample import resample

    mic = resample(user, RATE, 48000)
    mic = np.stack([mic, mic], axis=1)  # (N, 2)
    played = []
    stop = threading.Event()

    def audio_bus():  # 20 ms duplex blocks, as the application's callback would run them
        block, position, start = 960, 0, time.monotonic()
        while not stop.is_set():
            chunk = mic[position : position + block]
            if len(chunk) < block:
                chunk = np.zeros((block, 2), np.float32)
            io.write_mic(chunk)
            played.append(io.read_speaker(block))
            position += block
            time.sleep(max(0.0, start + position / 48000 - time.monotonic()))

    bus = threading.Thread(target=audio_bus, daemon=True)
    done = threading.Event()
    agent.on(ev.AGENT_DONE, lambda event: done.set())
    with agent.start(io):
        bus.start()
        assert done.wait(timeout=60), [e.kind for e in agent.bus.history()][-10:]
    stop.set()
    bus.join()
    transcripts = [e.data["text"] for e in agent.bus.history(ev.TRANSCRIPT)]
    assert "France" in transcripts[-1]
    audio = np.concatenate(played)
    assert np.abs(audio).max() > 0.05 and np.count_nonzero(np.abs(audio) > 1e-3) > 48000 * 0.5  # it spoke


def test_bad_tools_fail_at_registration(agent):
    with pytest.raises(EdgevoiceError, match="JSON schema"):
        agent.tool(parameters={"type": "nonsense"})(lambda: None)

    @agent.tool(name="clock_time")
    def clock_time():
        return "noon"

    with pytest.raises(EdgevoiceError, match="already registered"):
        agent.tool(name="clock_time")(lambda: None)


def test_a_device_failing_mid_stream_ends_the_conversation_with_its_error(agent):
    io = AppAudioIO(input_rate=16000, output_rate=16000)
    ends = []
    agent.on(ev.SESSION_END, ends.append)
    agent.start(io)
    for _ in range(10):
        io.write_mic(np.zeros(320, np.float32))
        io.read_speaker(320)
    io.error = EdgevoiceError("the audio device disappeared (unplugged?)")
    io.write_mic(np.zeros(320, np.float32))  # wakes the listen loop, which finds the error
    with pytest.raises(EdgevoiceError, match="disappeared"):
        agent.wait(timeout=10)
    agent.stop()
    assert ends and "disappeared" in ends[-1].data["error"]


def test_talk_runs_a_freeze_omni_package_through_the_same_agent(tmp_path):
    """The tiny recipe (Freeze-Omni's graph at toy width, random weights): the agent picks the
    recipe's glue from the manifest; the turn-state head decides (on random weights: dismisses)."""
    from edgevoice.export import export_package

    package = export_package(model="tiny", target="cpu", out=REPO / "engines" / "tiny-cpu")
    events = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "edgevoice.cli.main", "talk", "--package", str(package.directory), "--input",
           str(REPO / "examples" / "question.wav"), "--output", str(tmp_path / "said.wav"), "--events", str(events)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    kinds = [line.split('"kind": "')[1].split('"')[0] for line in events.read_text().splitlines()]
    assert "turn_state" in kinds and kinds[-1] == "session_end"
    tiny = Agent(package.directory)  # its tools at work: tests/runtime/freeze_omni/test_tool_calls.py
    tiny.tool(name="noop")(lambda: None)
    session = tiny._new_session(FileIO(question(), recording_rate=RATE))
    assert [tool.name for tool in session.tools.tools] == ["noop"]
    session.close()
