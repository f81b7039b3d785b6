"""Live audio through real PortAudio streams, on a virtual sound card.

The card is a private PulseAudio server (its own socket under the test's temporary folder, so a
desktop's sound server is never touched) with two null sinks: ``edgevoice_mic``, whose monitor is
the default source (the microphone), and ``edgevoice_speaker``, the default sink (the speaker).
PortAudio reaches it through ALSA's pulse plugin, which an ``asoundrc`` in the test's
``XDG_CONFIG_HOME`` makes ALSA's default device, with ``edgevoice_mic`` and ``edgevoice_speaker``
as named ALSA devices besides. The spoken question is played into the virtual microphone while
``edgevoice talk`` runs live on the default devices; the speaker's monitor is recorded.

`scripts/test-audio-deps.sh` installs the card (`.ci/run` calls it). In CI (``CI`` set) a card that
cannot be started fails these tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from glob import glob
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO

MIC, SPEAKER = "edgevoice_mic", "edgevoice_speaker"
CAPTURE_RATE = 16000  # the monitors are recorded as 16-bit mono at this rate
ENGINE_LOAD_SECONDS = 180  # talk's start on 2 busy cores: load and check every engine
ANSWER_SECONDS = 90  # end of the question -> the agent's first audio
ASOUNDRC = f"""\
pcm.!default {{ type pulse }}
ctl.!default {{ type pulse }}
pcm.{MIC} {{
    type pulse
    device "{MIC}.monitor"
    hint {{ show on description "edgevoice virtual microphone" }}
}}
pcm.{SPEAKER} {{
    type pulse
    device "{SPEAKER}"
    hint {{ show on description "edgevoice virtual speaker" }}
}}
"""


def unavailable(reason: str):
    """No virtual sound card: a failure in CI, where the card must run, a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the live-audio tests: .ci/run installs their card with "
                    f"scripts/test-audio-deps.sh)", pytrace=False)
    pytest.skip(reason)


def missing_tools() -> list[str]:
    missing = [tool if tool == package else f"{tool} ({package})" for tool, package in
               (("pulseaudio", "pulseaudio"), ("pactl", "pulseaudio-utils"), ("parec", "pulseaudio-utils"),
                ("paplay", "pulseaudio-utils")) if shutil.which(tool) is None]
    if not glob("/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so") + glob("/usr/lib/alsa-lib/libasound_module_pcm_pulse.so"):
        missing.append("ALSA's pulse plugin (libasound2-plugins)")
    return missing


def child_with_sigint():
    """For Popen: a child that takes SIGINT as Ctrl-C even where this process ignores it (a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class VirtualCard(SimpleNamespace):
    """The running card: ``env`` for every process that should see it."""

    def pactl(self, *args: str) -> str:
        return subprocess.run(["pactl", *args], env={**self.env, "LC_ALL": "C"}, check=True, capture_output=True,
                              text=True, timeout=10).stdout

    def recording_pids(self) -> set[str]:
        """Process ids of the clients recording from the virtual microphone."""
        mic = {line.split("\t")[0] for line in self.pactl("list", "short", "sources").splitlines()
               if line.split("\t")[1:2] == [f"{MIC}.monitor"]}
        pids, source = set(), None
        for line in self.pactl("list", "source-outputs").splitlines():
            key, _, value = line.strip().partition(" = " if " = " in line else ":")
            if key.startswith("Source Output #"):
                source = None
            elif key == "Source":
                source = value.strip()
            elif key == "application.process.id" and source in mic:
                pids.add(value.strip().strip('"'))
        return pids

    @contextlib.contextmanager
    def recording(self, source: str, path: Path):
        """Record ``source`` into ``path`` (raw s16le mono). The low latency requested here also makes the
        null sink tick in small blocks like a hardware card (left alone it renders 2 s at a time)."""
        with path.open("wb") as out:
            proc = subprocess.Popen(["parec", "--latency-msec=20", f"--device={source}", "--raw", "--format=s16le",
                                     f"--rate={CAPTURE_RATE}", "--channels=1"], env=self.env, stdout=out,
                                    stderr=subprocess.DEVNULL)
        try:
            yield path
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    def play(self, wav: Path) -> None:
        """Speak ``wav`` into the virtual microphone; returns once it has played."""
        subprocess.run(["paplay", f"--device={MIC}", str(wav)], env=self.env, check=True, timeout=60)


@pytest.fixture(scope="module")
def virtual_card(tmp_path_factory):
    missing = missing_tools()
    if missing:
        unavailable(f"no virtual sound card: missing {', '.join(missing)}; install them with "
                    f"sh scripts/test-audio-deps.sh")
    root = tmp_path_factory.mktemp("soundcard")
    (root / "config" / "alsa").mkdir(parents=True)
    (root / "config" / "alsa" / "asoundrc").write_text(ASOUNDRC)
    env = {key: value for key, value in os.environ.items() if key not in ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY")}
    env.update(XDG_RUNTIME_DIR=str(root), PULSE_RUNTIME_PATH=str(root / "pulse"), XDG_CONFIG_HOME=str(root / "config"),
               PULSE_SERVER=f"unix:{root / 'native'}")
    log = root / "pulseaudio.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "-n", "--system=false", "--exit-idle-time=-1", "--realtime=no",
             "--high-priority=no", "--use-pid-file=no", "--log-target=stderr",
             "-L", f"module-native-protocol-unix auth-anonymous=1 socket={root / 'native'}",
             "-L", f"module-null-sink sink_name={SPEAKER} sink_properties=device.description=edgevoice-speaker",
             "-L", f"module-null-sink sink_name={MIC} sink_properties=device.description=edgevoice-mic"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
    card = VirtualCard(env=env, root=root)
    try:
        deadline = time.monotonic() + 15
        while True:
            if server.poll() is not None:
                unavailable(f"PulseAudio exited with status {server.returncode}: {log.read_text()[-1500:]}")
            if subprocess.run(["pactl", "info"], env=env, capture_output=True, timeout=10, check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                unavailable(f"PulseAudio did not answer within 15 s: {log.read_text()[-1500:]}")
            time.sleep(0.1)
        card.pactl("set-default-sink", SPEAKER)
        card.pactl("set-default-source", f"{MIC}.monitor")
        yield card
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def edgevoice_command() -> list[str]:
    script = Path(sys.executable).parent / "edgevoice"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgevoice.cli.main"]


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            break
    return events


def loud_seconds(path: Path, threshold_db: float = -40.0) -> float:
    """Seconds of a raw s16le capture whose 20 ms windows are louder than ``threshold_db`` dBFS."""
    samples = np.frombuffer(path.read_bytes(), dtype="<i2").astype(np.float32) / 32768
    window = CAPTURE_RATE // 50
    frames = samples[: len(samples) // window * window].reshape(-1, window)
    rms = np.sqrt(np.mean(frames * frames, axis=1)) if len(frames) else np.zeros(0)
    return float(np.sum(rms > 10 ** (threshold_db / 20)) * window / CAPTURE_RATE)


def talk_live(card: VirtualCard, package: Path, audio_backend: str, tmp_path: Path) -> SimpleNamespace:
    """Run ``edgevoice talk`` live on the default devices, ask the question into the virtual microphone,
    let the answer start playing, then Ctrl-C it. Returns its output, events and both captures."""
    events = tmp_path / "events.jsonl"
    out, err = tmp_path / "talk.out", tmp_path / "talk.err"
    command = [*edgevoice_command(), "talk", "--package", str(package), "--events", str(events),
               "--audio-backend", audio_backend]
    with (card.recording(f"{SPEAKER}.monitor", tmp_path / "speaker.raw") as speaker,
          card.recording(f"{MIC}.monitor", tmp_path / "mic.raw") as mic,
          out.open("w") as out_file, err.open("w") as err_file):
        talk = subprocess.Popen(command, cwd=REPO, env=card.env, stdout=out_file, stderr=err_file,
                                preexec_fn=child_with_sigint)  # noqa: PLW1509 - only resets a signal

        def failed(what: str) -> str:
            return f"{what}; talk: {' '.join(command)}\nstdout:\n{out.read_text()[-2000:]}\nstderr:\n{err.read_text()[-3000:]}"

        try:
            deadline = time.monotonic() + ENGINE_LOAD_SECONDS
            while str(talk.pid) not in card.recording_pids():  # listening: its stream reads the virtual microphone
                assert talk.poll() is None, failed(f"talk exited with status {talk.returncode} before listening")
                assert time.monotonic() < deadline, failed(f"talk did not open the microphone within {ENGINE_LOAD_SECONDS} s")
                time.sleep(0.2)
            card.play(REPO / "examples" / "question.wav")
            deadline = time.monotonic() + ANSWER_SECONDS
            while not any(e["kind"] == "first_audio" for e in read_events(events)):
                assert talk.poll() is None, failed(f"talk exited with status {talk.returncode} before answering")
                assert time.monotonic() < deadline, failed(f"no first_audio within {ANSWER_SECONDS} s of the question")
                time.sleep(0.2)
            time.sleep(2.0)  # let the answer play for a while
            talk.send_signal(signal.SIGINT)  # Ctrl-C: talk stops and prints its summary
            try:
                returncode = talk.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(failed("talk did not end within 60 s of Ctrl-C"))
        finally:
            if talk.poll() is None:
                talk.kill()
                talk.wait()
    return SimpleNamespace(returncode=returncode, stdout=out.read_text(), stderr=err.read_text(),
                           events=read_events(events), speaker=speaker, mic=mic, failed=failed)


# PortAudio's ALSA path (through the pulse plugin) sometimes ends a stream after an underrun on a
# busy machine: PaAlsaStream_WaitForFrames fails, the reopen finds no stream, and talk rightly says
# the device stopped. That is PortAudio's, not edgevoice's, so that failure alone, and only once,
# gets a second conversation; any other failure, or the same one twice, fails the test.
ALSA_STREAM_ENDED = ("PaAlsaStream_WaitForFrames", "the audio device stopped")


def talk_live_once_more_if_alsa_ended(card: VirtualCard, package: Path, audio_backend: str,
                                      tmp_path: Path) -> SimpleNamespace:
    try:
        return talk_live(card, package, audio_backend, tmp_path)
    except AssertionError as exc:
        if not all(sign in str(exc) for sign in ALSA_STREAM_ENDED):
            raise
    again = tmp_path / "again"
    again.mkdir()
    return talk_live(card, package, audio_backend, again)


@pytest.fixture(scope="module")
def live_package(cascade_package) -> Path:
    return cascade_package.directory


@pytest.mark.audio_device
def test_devices_lists_the_virtual_card(virtual_card):
    run = subprocess.run([*edgevoice_command(), "devices", "--json"], env=virtual_card.env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    devices = {d["name"]: d for d in json.loads(run.stdout)}
    assert MIC in devices and SPEAKER in devices, devices
    default = [d for d in devices.values() if d["default_input"] and d["default_output"]]
    assert default and default[0]["max_input_channels"] > 0 and default[0]["max_output_channels"] > 0, devices
    table = subprocess.run([*edgevoice_command(), "devices"], env=virtual_card.env, capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert MIC in table and SPEAKER in table and "(default in/out)" in table, table


@pytest.mark.audio_device
@pytest.mark.slow
@pytest.mark.parametrize("audio_backend", ["sounddevice", "pyaudio"])
def test_talk_live_hears_the_question_and_answers_on_the_speaker(virtual_card, live_package, audio_backend, tmp_path):
    if audio_backend == "pyaudio":
        try:
            import pyaudio  # noqa: F401
        except ImportError:
            unavailable("PyAudio is not installed: pip install -e '.[pyaudio]' (needs portaudio19-dev and a C compiler)")
    talk = talk_live_once_more_if_alsa_ended(virtual_card, live_package, audio_backend, tmp_path)
    assert talk.returncode == 0, talk.failed(f"talk exited with status {talk.returncode} after Ctrl-C")
    kinds = [e["kind"] for e in talk.events]
    assert loud_seconds(talk.mic) > 1.0, "the question never reached the virtual microphone"
    for kind in ("user_speech_start", "user_speech_end", "turn_taken", "transcript", "first_audio", "session_end"):
        assert kind in kinds, talk.failed(f"no {kind} event (events: {sorted(set(kinds))})")
    heard = " ".join(e["data"]["text"] for e in talk.events if e["kind"] == "transcript").lower()
    assert "capital" in heard or "france" in heard, talk.failed(f"heard {heard!r}")
    assert loud_seconds(talk.speaker) > 0.3, talk.failed("the virtual speaker stayed silent")
    summary = next(e["data"] for e in talk.events if e["kind"] == "session_end")
    assert isinstance(summary.get("device_xruns"), int), summary
    assert summary["turns"] >= 1 and "error" not in summary, summary
    assert "device xruns" in talk.stdout, talk.stdout[-2000:]  # the Ctrl-C summary counts them


class _StalledStream:
    active = True

    def __init__(self, **kwargs):
        pass

    def start(self):
        pass

    def abort(self, ignore_errors=True):
        self.active = False

    def close(self, ignore_errors=True):
        pass


def test_a_stream_that_stops_calling_back_ends_a_wait_with_an_error_not_silence(monkeypatch):
    """talk on a stalled virtual card used to end the conversation quietly (status 0) at the first
    1 s wait for the microphone; a live stream has no end, so the wait reports the stall."""
    import edgevoice.audio.devices
    from edgevoice.audio.device_io import DeviceConfig
    from edgevoice.audio.portaudio import SoundDeviceIO
    from edgevoice.errors import EdgevoiceError

    info = {"name": "stalled", "max_input_channels": 1, "max_output_channels": 1, "default_samplerate": 16000.0}
    fake = SimpleNamespace(query_devices=lambda: [info], default=SimpleNamespace(device=[0, 0]),
                           check_input_settings=lambda **_: None, check_output_settings=lambda **_: None,
                           Stream=_StalledStream, PortAudioError=RuntimeError)
    monkeypatch.setattr(edgevoice.audio.devices, "import_sounddevice", lambda: fake)
    # The pump (and its watchdog) never runs here: the wait alone has to notice.
    io = SoundDeviceIO(DeviceConfig(stall_seconds=0.3, pump_interval_seconds=60.0), mic_rate=16000, speaker_rate=16000)
    io.start()
    try:
        assert not io.wait_for_mic(320, timeout=0.05)  # shorter than a stall: just no audio yet
        with pytest.raises(EdgevoiceError, match="delivered nothing"):
            io.wait_for_mic(320, timeout=0.3)
    finally:
        io.stop()


class _DyingOnceStream(_StalledStream):
    """Calls back every 10 ms from its own thread; the first stream opened ends itself after 5 blocks,
    as PortAudio's ALSA host API does after an xrun on the pulse plugin."""

    opened = 0

    def __init__(self, **kwargs):
        import threading

        type(self).opened += 1
        self.kwargs, self.lifetime = kwargs, 5 if type(self).opened == 1 else None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()

    def run(self):
        blocks = 0
        while self.active and (self.lifetime is None or blocks < self.lifetime):
            self.kwargs["callback"](np.zeros((160, 1), np.float32), np.zeros((160, 1), np.float32), 160, None, None)
            blocks += 1
            time.sleep(0.01)
        self.active = False

    def abort(self, ignore_errors=True):
        self.active = False
        if self.thread.is_alive():
            self.thread.join()


def test_a_stream_that_portaudio_ends_after_an_xrun_is_reopened(monkeypatch):
    import edgevoice.audio.devices
    from edgevoice.audio.device_io import DeviceConfig
    from edgevoice.audio.portaudio import SoundDeviceIO

    info = {"name": "flaky", "max_input_channels": 1, "max_output_channels": 1, "default_samplerate": 16000.0}
    fake = SimpleNamespace(query_devices=lambda: [info], default=SimpleNamespace(device=[0, 0]),
                           check_input_settings=lambda **_: None, check_output_settings=lambda **_: None,
                           Stream=_DyingOnceStream, PortAudioError=RuntimeError)
    monkeypatch.setattr(edgevoice.audio.devices, "import_sounddevice", lambda: fake)
    io = SoundDeviceIO(DeviceConfig(), mic_rate=16000, speaker_rate=16000)
    with io:
        heard = 0
        while heard < 16000:  # a second of audio: far more than the first stream delivered
            assert io.wait_for_mic(320, timeout=2.0)
            heard += io.mic.read(io.mic_available()).size
            io.reference.read(io.reference.readable)
    assert _DyingOnceStream.opened == 2 and io.error is None
    assert io.stats.xruns == 1  # the gap of the reopen
