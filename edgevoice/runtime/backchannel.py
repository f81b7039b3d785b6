"""Agent backchannels: a quiet "mhm" while the user talks at length, never a turn of its own.

A listener shows they follow a long turn with short sounds at the speaker's pauses. The agent may
do the same, within limits that keep it from sounding eager or stepping on the user:

- only at a pause that is not the end of the turn: the end-of-turn model's "incomplete" verdict
  when the package has one, otherwise a VAD silence of ``pause_ms`` (shorter than the endpoint);
- only once the user has spoken ``min_speech_s`` in this turn;
- at most one per ``every_s`` of user speech, so never twice without new speech in between;
- never over the user's speech, and cut at once if the user resumes while it plays.

A backchannel is never the agent's turn: no LLM call, no history entry, and the turn policy is not
told (the user keeps the floor). ``BackchannelScheduler`` is the pure part, fed one frame at a
time like the turn policy, so it runs on any clock and is tested without audio; the session plays
the clips (pre-synthesized once, at ``gain_db``) and does what it says.

Without echo cancellation the session cannot tell its own "mhm" from the user's voice, so it is
deaf for the clip's duration plus ``echo_tail_s`` (``deaf_until``): the turn policy gets no frames
(neither speech nor silence) and the transcript gets zeros, so a user who resumes in that window
is heard only after it (a few hundred milliseconds) and their first word may be lost. With echo cancellation the clip is the
canceller's reference like any speaker audio, and the user's resumption cuts it at once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BackchannelOptions:
    """When and how the agent backchannels (pass to ``SessionOptions(backchannels=...)``)."""

    phrases: tuple[str, ...] = ("mhm", "right", "I see")  # synthesized once when the session starts
    gain_db: float = -10.0  # quieter than a reply: a listener's sound, not an answer
    min_speech_s: float = 3.0  # user speech in this turn before the first backchannel
    every_s: float = 6.0  # user speech (across turns) between two backchannels
    pause_ms: float = 300.0  # without an end-of-turn model: the silence that counts as a pause
    echo_tail_s: float = 0.25  # without echo cancellation: deaf this long after a clip ends (room echo)

    def __post_init__(self) -> None:
        if not self.phrases or not all(p.strip() for p in self.phrases):
            raise ValueError("phrases must hold at least one non-empty phrase, e.g. ('mhm', 'right')")
        if self.every_s <= 0:  # zero would allow two backchannels with no speech between them
            raise ValueError(f"every_s must be > 0, got {self.every_s}")
        for name in ("min_speech_s", "pause_ms", "echo_tail_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.gain_db > 0:
            raise ValueError(f"gain_db must be <= 0 (a backchannel is never louder than a reply), got {self.gain_db}")

    @property
    def gain(self) -> float:
        """``gain_db`` as a linear amplitude factor."""
        return float(10.0 ** (self.gain_db / 20.0))


class BackchannelScheduler:
    """Decides when a backchannel may play; pure, one call per frame of the user's turn.

    The session calls ``start_turn`` at each user onset, ``hear`` on every frame while the user
    holds the floor (True: cut the clip now, the user resumed), and ``offer`` at a pause; when
    ``offer`` returns a phrase, the session plays its clip and reports how long it is with ``played``.
    """

    def __init__(self, options: BackchannelOptions, frame_s: float):
        self.options, self.frame_s = options, frame_s
        self.turn_speech_s = 0.0  # speech heard in the current user turn
        self.total_speech_s = 0.0  # speech heard in the whole session
        self._speech_at_last: float | None = None  # total_speech_s when the last backchannel played
        self.playing_until: float | None = None  # end time of the clip playing now
        self.deaf_until = -1.0  # without echo cancellation: ignore the microphone until then
        self._speaking_now = False  # the last frame heard was speech
        self._phrases = itertools.cycle(range(len(options.phrases)))

    def start_turn(self) -> None:
        """The user started a new turn: the minimum speech counts again from zero."""
        self.turn_speech_s = 0.0

    def hear(self, time: float, speech: bool) -> bool:
        """One frame of the user's turn at ``time``; True when a playing clip must be cut (the user resumed)."""
        self._speaking_now = speech
        if not speech:
            return False
        self.turn_speech_s += self.frame_s
        self.total_speech_s += self.frame_s
        if self.playing(time):
            self.playing_until = None
            return True
        return False

    def offer(self, time: float, silence_ms: float, incomplete: bool | None) -> str | None:
        """A frame in a pause of the user's turn: the phrase to play now, or None.

        ``incomplete``: the end-of-turn model's verdict on this silence, given in the frame it
        arrived (True: "not done yet"); None when the session has no model, and the VAD pause
        (``silence_ms >= pause_ms``) is the cue instead.
        """
        cue = incomplete if incomplete is not None else silence_ms >= self.options.pause_ms
        if not cue or not self.allowed(time):
            return None
        index = next(self._phrases)
        self._speech_at_last = self.total_speech_s
        return self.options.phrases[index]

    def allowed(self, time: float) -> bool:
        """Every limit but the cue: in silence, enough speech in this turn and since the last one."""
        if self._speaking_now or self.playing(time):
            return False
        if self.turn_speech_s < self.options.min_speech_s:
            return False
        return self._speech_at_last is None or self.total_speech_s - self._speech_at_last >= self.options.every_s

    def played(self, time: float, duration_s: float, echo_cancellation: bool) -> None:
        """The clip started at ``time`` and lasts ``duration_s``."""
        self.playing_until = time + duration_s
        if not echo_cancellation:
            self.deaf_until = self.playing_until + self.options.echo_tail_s

    def playing(self, time: float) -> bool:
        return self.playing_until is not None and time < self.playing_until

    def deaf(self, time: float) -> bool:
        """Without echo cancellation: the microphone holds the agent's own clip (or its echo) now."""
        return time < self.deaf_until


def quiet_clip(audio: np.ndarray, gain: float) -> np.ndarray:
    """A clip scaled by ``gain``, float32, without the voice's leading and trailing silence (it would
    only lengthen the time the clip holds the speaker), with 5 ms fades so it starts and stops without a click."""
    clip = np.asarray(audio, np.float32) * np.float32(gain)
    voiced = np.flatnonzero(np.abs(clip) > 0.02 * np.abs(clip).max()) if clip.size else clip
    if voiced.size:
        clip = clip[voiced[0] : voiced[-1] + 1].copy()
    fade = min(clip.size // 2, 110)  # ~5 ms at 22.05 kHz
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        clip[:fade] *= ramp
        clip[-fade:] *= ramp[::-1]
    return clip
