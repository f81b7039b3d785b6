"""A script's conversations as microphone recordings, with where every word really is.

User text is spoken by espeak-ng (a separate program, as the voice's phonemizer runs it), resampled
to the microphone rate and trimmed to its speech; a recording (``{wav: PATH}``) is read, mixed down
and resampled. ``render`` lays the items out on silence and returns the recording together with the
ground truth the scorer needs: each user item's voiced stretches and thinking pauses, in seconds.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from edgevoice.errors import EdgevoiceError
from edgevoice.eval.script import Conversation, Silence, Speech

RATE = 16000  # the microphone rate of every package's VAD
VOICED = 1e-3  # |sample| above this is speech: espeak's silence is digital zero
ESPEAK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class UserSpan:
    """Where one scripted user item sounds in the recording (seconds)."""

    index: int  # position in the conversation's timeline
    kind: str  # say | monologue | barge_in | backchannel
    text: str
    segments: tuple[tuple[float, float], ...]  # voiced stretches, in order
    pauses: tuple[tuple[float, float], ...]  # the scripted thinking pauses between them
    expect: str | None = None
    expect_regex: str | None = None

    @property
    def start(self) -> float:
        return self.segments[0][0]

    @property
    def end(self) -> float:
        return self.segments[-1][1]


@dataclass(frozen=True)
class Rendered:
    conversation: Conversation
    recording: np.ndarray  # (N,) float32 at RATE
    spans: tuple[UserSpan, ...]

    @property
    def seconds(self) -> float:
        return len(self.recording) / RATE


def check_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        raise EdgevoiceError("the script's speech is synthesized by espeak-ng, which is not installed: "
                             "sudo apt-get install espeak-ng (macOS: brew install espeak-ng)")


@functools.lru_cache(maxsize=256)
def speak(text: str, voice: str, rate: int) -> np.ndarray:
    """``text`` spoken by espeak-ng at RATE, trimmed to its speech: (N,) float32 (read-only, cached)."""
    import soundfile

    from edgevoice.audio.resample import resample

    check_espeak()
    try:
        done = subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text],
                              capture_output=True, check=False, timeout=ESPEAK_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise EdgevoiceError(f"espeak-ng did not answer within {ESPEAK_TIMEOUT_S:.0f} s for {text!r}") from exc
    if done.returncode != 0 or not done.stdout:
        problem = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        raise EdgevoiceError(f"espeak-ng could not speak {text!r} with voice {voice!r} ({problem}); "
                             f"list the voices with: espeak-ng --voices")
    samples, rate_read = soundfile.read(io.BytesIO(done.stdout), dtype="float32")
    audio = trimmed(resample(np.asarray(samples, np.float32), int(rate_read), RATE))
    audio.setflags(write=False)
    return audio


def read_recording(path) -> np.ndarray:
    """A WAV (any rate/channels) as (N,) float32 at RATE, trimmed to its sound."""
    from edgevoice.audio.resample import mixdown, resample
    from edgevoice.audio.wav import read_audio

    samples, rate = read_audio(path)
    return trimmed(resample(np.array(mixdown(samples), np.float32), rate, RATE), relative=0.02)


def trimmed(audio: np.ndarray, relative: float = 0.0) -> np.ndarray:
    """Without leading and trailing silence: below VOICED, or below ``relative`` x the peak (a
    recording's noise floor; espeak's silence is exact zeros, so it needs no relative floor)."""
    voiced = np.flatnonzero(np.abs(audio) > max(VOICED, relative * float(np.abs(audio).max(initial=0.0))))
    if not voiced.size:
        raise EdgevoiceError("a piece of the script's speech came out silent; check its text or recording")
    return audio[voiced[0] : voiced[-1] + 1]


def render(conversation: Conversation) -> Rendered:
    """The conversation's recording and where each user item sounds in it."""
    pieces: list[np.ndarray] = []
    spans: list[UserSpan] = []
    cursor = 0  # samples laid out so far
    for index, item in enumerate(conversation.timeline):
        if item.at is not None:
            start = round(item.at * RATE)
            if start < cursor:
                raise EdgevoiceError(f"conversation {conversation.name!r}, timeline[{index}].at: {item.at} s is before "
                                     f"the previous item ends ({cursor / RATE:.2f} s); move it later or drop 'at'")
            pieces.append(np.zeros(start - cursor, np.float32))
            cursor = start
        if isinstance(item, Silence):
            audio = np.zeros(round(item.seconds * RATE), np.float32)
        else:
            audio, segments, pauses = _speech(item)
            offset = cursor / RATE
            spans.append(UserSpan(index, item.kind, item.text, _shift(segments, offset), _shift(pauses, offset),
                                  item.expect, item.expect_regex))
        pieces.append(audio)
        cursor += len(audio)
    return Rendered(conversation, np.concatenate(pieces).astype(np.float32), tuple(spans))


def _speech(item: Speech) -> tuple[np.ndarray, list[tuple[float, float]], list[tuple[float, float]]]:
    """(audio, voiced segments, pauses), times from the item's start."""
    if item.wav is not None:
        audio = read_recording(item.wav)
        clips: list[np.ndarray | float] = [audio]
    else:
        clips = [speak(p, item.voice, item.rate) if isinstance(p, str) else p for p in item.parts]
    pieces, segments, pauses, t = [], [], [], 0
    for clip in clips:
        if isinstance(clip, float):  # a thinking pause between two pieces of speech
            gap = round(clip * RATE)
            pauses.append((t / RATE, (t + gap) / RATE))
            pieces.append(np.zeros(gap, np.float32))
            t += gap
            continue
        pieces.append(clip)
        segments.append((t / RATE, (t + len(clip)) / RATE))
        t += len(clip)
    audio = np.concatenate(pieces)
    if item.max_s is not None and len(audio) > item.max_s * RATE:
        audio = audio[: int(item.max_s * RATE)]
        limit = len(audio) / RATE
        segments = [(a, min(b, limit)) for a, b in segments if a < limit]
        pauses = [(a, b) for a, b in pauses if b <= limit]
    return audio, segments, pauses


def _shift(spans, offset: float) -> tuple[tuple[float, float], ...]:
    return tuple((round(a + offset, 4), round(b + offset, 4)) for a, b in spans)


def room_echo_path(delay_s: float, seed: int = 1, gain: float = 0.5) -> np.ndarray:
    """A speaker-to-microphone path at RATE: ``delay_s`` of silence, then a 100 ms room (random taps
    under a 20 ms exponential decay) whose energy is ``gain`` — a small room with the speaker close by."""
    rng = np.random.default_rng(seed)
    taps = int(0.1 * RATE)
    response = rng.standard_normal(taps) * np.exp(-np.arange(taps) / (0.02 * RATE))
    response *= gain / np.sqrt(np.sum(response**2))
    return np.concatenate([np.zeros(int(delay_s * RATE)), response]).astype(np.float32)
