"""The kiosk page of `edgevoice serve` in a real headless browser.

Debian's ``chromium``, driven by Playwright for Python with the system browser (Playwright's own
browsers are never downloaded), opens the page that ``edgevoice serve --package engines/cpu``
serves, with a fake microphone that plays ``examples/question.wav`` ("What is the capital of
France?"). The page asks for the microphone (``getUserMedia`` with echo cancellation, through an
AudioWorklet), talks the wire protocol of ``edgevoice/serve/protocol.py`` and shows the
transcript, the reply and the turn state; its ``window.kiosk`` counters tell whether the agent's
audio reached it. A screenshot is kept at ``test-artifacts/kiosk.png``.

`scripts/test-browser-deps.sh` installs chromium (`.ci/run` calls it) and the ``dev`` extra brings
Playwright. In CI (``CI`` set) a missing browser or Playwright fails these tests; elsewhere they
are skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SERVER_START_SECONDS = 180  # serve's start on 2 busy cores: load and check every engine
ANSWER_SECONDS = 90  # Talk pressed -> transcript, reply and the agent's audio on the page
ARTIFACTS = REPO / "test-artifacts"
# examples/question.wav asks "What is the capital of France?". Through the browser's noise
# suppression and gain control Whisper tiny.en sometimes hears "... capital and friends?" (here:
# 0 of 6 runs at the recording's level, 1 of 3 at -3 dB, 3 of 5 at -8 dB; 0 of 5 at -8 dB with the
# processing off), so the test asks for the word it always heard, not for the answer "Paris".
QUESTION_WORD = "capital"


def unavailable(reason: str):
    """No browser to test with: a failure in CI, where it must run, a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser tests: .ci/run installs chromium with "
                    f"scripts/test-browser-deps.sh, and Playwright comes with the dev extra)", pytrace=False)
    pytest.skip(reason)


def words(text: str) -> set[str]:
    return {w.strip(".,!?;:'\"").lower() for w in text.split()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def edgevoice_command() -> list[str]:
    script = Path(sys.executable).parent / "edgevoice"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgevoice.cli.main"]


def fake_microphone(path: Path) -> Path:
    """The question as chromium's fake capture wants it (16-bit PCM WAV): 1 s of silence, the
    question, then 30 s of silence so that the file, which chromium loops, does not ask again
    while the agent answers (that would be a barge-in)."""
    import soundfile

    samples, rate = soundfile.read(str(REPO / "examples" / "question.wav"), dtype="int16")  # (n,) mono
    silence = np.zeros(rate, dtype=np.int16)
    soundfile.write(str(path), np.concatenate([silence, samples, np.tile(silence, 30)]), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = shutil.which("chromium")
    if executable is None:
        unavailable("no chromium on PATH; install it with sh scripts/test-browser-deps.sh")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable('Playwright for Python is missing; install it with pip install -e ".[dev]"')
    question = fake_microphone(tmp_path_factory.mktemp("browser") / "question.wav")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=[
            "--use-fake-ui-for-media-stream",  # allow the microphone without asking
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={question}",
            "--autoplay-policy=no-user-gesture-required",
        ])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(cascade_package, tmp_path_factory):
    """``edgevoice serve`` on the cascade package, on a free loopback port, with a fresh token."""
    port, token = free_port(), secrets.token_urlsafe(12)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [*edgevoice_command(), "serve", "--package", str(cascade_package.directory), "--host", "127.0.0.1",
               "--port", str(port), "--token", token]
    with log.open("w") as log_file:
        process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def failed(what: str) -> str:
        return f"{what}; serve: {' '.join(command)}\noutput:\n{log.read_text()[-3000:]}"

    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            assert process.poll() is None, failed(f"serve exited with status {process.returncode} before serving")
            assert time.monotonic() < deadline, failed(f"serve did not answer within {SERVER_START_SECONDS} s")
            try:
                with urllib.request.urlopen(f"{url}/", timeout=5) as page:
                    if page.status == 200:
                        break
            except OSError:  # not listening yet (refused, reset, timed out)
                time.sleep(0.5)
        yield SimpleNamespace(url=url, token=token, failed=failed)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def kiosk(page) -> dict:
    return page.evaluate("({...window.kiosk})")


def test_kiosk_page_hears_the_question_and_plays_the_answer(browser, server):
    """Talk pressed: the page streams the fake microphone, shows what the agent heard and replied,
    and receives the agent's spoken answer as non-silent audio frames, which it plays."""
    page = browser.new_page(viewport={"width": 1000, "height": 640})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{server.url}/?token={server.token}")
        page.click("#talk")
        try:
            page.wait_for_function("window.kiosk.lastTranscript && window.kiosk.lastReply"
                                   " && window.kiosk.nonSilentAudioFrames >= 10"
                                   " && (window.kiosk.playback.nonSilentPlayed || 0) > 0",
                                   timeout=ANSWER_SECONDS * 1000, polling=200)
        except Exception as exc:  # noqa: BLE001 - say what the page had when time ran out
            pytest.fail(server.failed(f"{type(exc).__name__}: the page did not get the answer: {kiosk(page)}; "
                                      f"page errors: {errors}"))
        state = kiosk(page)
        shown = {part: page.inner_text(f"#{part}") for part in ("transcript", "reply", "state")}
        ARTIFACTS.mkdir(exist_ok=True)
        shot = page.screenshot(path=str(ARTIFACTS / "kiosk.png"), full_page=True)
    finally:
        page.close()
    assert not errors, errors
    heard, replied = state["lastTranscript"], state["lastReply"]
    assert QUESTION_WORD in words(heard), f"transcript {heard!r}, reply {replied!r}"
    assert len(words(replied)) >= 2, f"transcript {heard!r}, reply {replied!r}"
    assert state["framesSent"] > 50 and state["audioFramesReceived"] > 50, state  # > 1 s each way
    assert state["ready"]["recipe"] == "cascade", state
    # What a person at the kiosk reads, not only what the test hooks hold.
    assert shown["transcript"] == heard and shown["reply"].startswith(replied), shown
    assert shown["state"] in ("listening", "user speaking", "thinking", "speaking"), shown
    assert (ARTIFACTS / "kiosk.png").stat().st_size > 10_000 and shot[:8] == b"\x89PNG\r\n\x1a\n"


def test_kiosk_page_shows_a_wrong_token_refused(browser, server):
    """The server refuses the upgrade with HTTP 401; the page says in words that the token was
    refused, and sends no audio."""
    page = browser.new_page()
    try:
        page.goto(f"{server.url}/?token=not-{server.token}")
        page.click("#talk")
        page.wait_for_function("window.kiosk.lastError !== ''", timeout=30_000, polling=100)
        shown = page.inner_text("#problem")
        state = kiosk(page)
    finally:
        page.close()
    assert "refused the token" in shown, shown
    assert state["framesSent"] == 0 and state["ready"] is None and state["state"] == "closed", state
