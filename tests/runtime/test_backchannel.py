"""The backchannel scheduler: when the agent may say "mhm" during the user's turn (pure, no audio)."""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.runtime.backchannel import (
    BackchannelOptions,
    BackchannelScheduler,
    quiet_clip,
)

FRAME = 0.032  # one VAD frame


class Turn:
    """Drives a scheduler frame by frame on a clock of its own, as the session does."""

    def __init__(self, options: BackchannelOptions = BackchannelOptions(), echo_cancellation: bool = True):
        self.scheduler = BackchannelScheduler(options, FRAME)
        self.echo_cancellation = echo_cancellation
        self.time, self.silence_ms, self.said, self.cuts = 0.0, 0.0, [], 0
        self.scheduler.start_turn()

    def speak(self, seconds: float) -> None:
        for _ in range(round(seconds / FRAME)):
            self._frame(speech=True)

    def pause(self, seconds: float, incomplete_at_ms: float | None = None) -> None:
        """Silence; without a model (``incomplete_at_ms`` None) the VAD pause is the cue."""
        for _ in range(round(seconds / FRAME)):
            verdict = None
            if incomplete_at_ms is not None:
                verdict = incomplete_at_ms <= self.silence_ms < incomplete_at_ms + FRAME * 1000
            self._frame(speech=False, incomplete=verdict)

    def _frame(self, speech: bool, incomplete: bool | None = None) -> None:
        self.time += FRAME
        self.silence_ms = 0.0 if speech else self.silence_ms + FRAME * 1000
        if self.scheduler.hear(self.time, speech):
            self.cuts += 1
        phrase = self.scheduler.offer(self.time, self.silence_ms, incomplete)
        if phrase is not None:
            self.said.append((round(self.time, 3), phrase))
            self.scheduler.played(self.time, 0.4, self.echo_cancellation)


def test_no_backchannel_before_the_minimum_speech():
    turn = Turn(BackchannelOptions(min_speech_s=3.0))
    turn.speak(2.0)
    turn.pause(0.5)
    assert turn.said == []  # 2 s of speech: too soon
    turn.speak(1.2)
    turn.pause(0.5)
    assert len(turn.said) == 1  # 3.2 s: now


def test_the_cue_is_the_vad_pause_without_a_model():
    turn = Turn(BackchannelOptions(min_speech_s=1.0, pause_ms=300.0))
    turn.speak(2.0)
    turn.pause(0.25)
    assert turn.said == []  # 250 ms is a gap between words, not a pause
    turn.pause(0.1)
    assert len(turn.said) == 1 and 2.3 <= turn.said[0][0] <= 2.35  # at 300 ms of silence


def test_with_a_model_only_the_incomplete_verdict_is_a_cue():
    turn = Turn(BackchannelOptions(min_speech_s=1.0, pause_ms=300.0))
    turn.speak(2.0)
    turn.pause(1.0, incomplete_at_ms=10_000)  # a verdict that never comes: no cue however long the silence
    assert turn.said == []
    turn.speak(0.5)
    turn.pause(1.0, incomplete_at_ms=500)
    assert len(turn.said) == 1


def test_rate_cap_one_per_every_s_of_user_speech():
    turn = Turn(BackchannelOptions(min_speech_s=1.0, every_s=6.0))
    for _ in range(6):  # 6 x (2 s of speech + a pause): 12 s of speech
        turn.speak(2.0)
        turn.pause(0.5)
    times = [t for t, _ in turn.said]
    assert len(times) == 2  # at 2 s of speech and at 8 s; a third would need 14 s
    assert times[1] - times[0] > 6.0


def test_never_twice_in_a_row_without_new_speech():
    # every_s is tiny: only the "new speech since" rule stands between two backchannels.
    turn = Turn(BackchannelOptions(min_speech_s=1.0, every_s=0.01))
    turn.speak(2.0)
    turn.pause(5.0)  # a long pause: many cues, no new speech
    assert len(turn.said) == 1
    turn.speak(0.1)
    turn.pause(0.5)
    assert len(turn.said) == 2


def test_never_over_the_users_speech():
    turn = Turn(BackchannelOptions(min_speech_s=0.5, every_s=0.01))
    turn.speak(2.0)
    scheduler = turn.scheduler
    scheduler.hear(turn.time + FRAME, speech=True)
    assert scheduler.offer(turn.time + FRAME, silence_ms=0.0, incomplete=True) is None  # a verdict, but they speak
    assert scheduler.offer(turn.time + FRAME, silence_ms=0.0, incomplete=None) is None


def test_the_user_resuming_cuts_the_clip_at_once():
    turn = Turn(BackchannelOptions(min_speech_s=1.0))
    turn.speak(2.0)
    turn.pause(0.32)  # ten frames: past pause_ms
    assert len(turn.said) == 1
    turn.speak(FRAME)  # the next frame is speech, inside the 0.4 s clip
    assert turn.cuts == 1 and not turn.scheduler.playing(turn.time)
    turn.speak(1.0)
    assert turn.cuts == 1  # cut once; nothing more to cut


def test_no_cut_once_the_clip_is_over():
    turn = Turn(BackchannelOptions(min_speech_s=1.0))
    turn.speak(2.0)
    turn.pause(1.0)
    turn.speak(1.0)
    assert len(turn.said) == 1 and turn.cuts == 0


def test_a_new_turn_needs_the_minimum_speech_again():
    turn = Turn(BackchannelOptions(min_speech_s=2.0, every_s=0.5))
    turn.speak(3.0)
    turn.pause(0.5)
    turn.scheduler.start_turn()
    turn.speak(1.0)
    turn.pause(0.5)
    assert len(turn.said) == 1  # 1 s into the new turn: not yet


def test_phrases_take_turns():
    turn = Turn(BackchannelOptions(phrases=("mhm", "right"), min_speech_s=0.5, every_s=0.5))
    for _ in range(3):
        turn.speak(1.0)
        turn.pause(0.5)
    assert [p for _, p in turn.said] == ["mhm", "right", "mhm"]


def test_without_echo_cancellation_the_session_is_deaf_for_the_clip_and_its_tail():
    turn = Turn(BackchannelOptions(min_speech_s=1.0, echo_tail_s=0.25), echo_cancellation=False)
    turn.speak(2.0)
    turn.pause(0.32)  # ten frames: past pause_ms
    [(started, _)] = turn.said
    assert turn.scheduler.deaf(started + 0.6) and not turn.scheduler.deaf(started + 0.66)
    with_aec = Turn(BackchannelOptions(min_speech_s=1.0))
    with_aec.speak(2.0)
    with_aec.pause(0.32)
    assert not with_aec.scheduler.deaf(with_aec.time)  # the canceller takes care of it: the user can cut it


def test_options_are_checked():
    with pytest.raises(ValueError, match="every_s"):
        BackchannelOptions(every_s=0.0)
    with pytest.raises(ValueError, match="phrases"):
        BackchannelOptions(phrases=())
    with pytest.raises(ValueError, match="gain_db"):
        BackchannelOptions(gain_db=3.0)
    assert BackchannelOptions(gain_db=-20.0).gain == pytest.approx(0.1)


def test_quiet_clip_is_trimmed_scaled_and_faded():
    voice = np.concatenate([np.zeros(1000), 0.5 * np.ones(2000), np.zeros(1000)]).astype(np.float32)
    clip = quiet_clip(voice, 0.25)
    assert clip.size == 2000 and clip.dtype == np.float32
    assert clip[1000] == pytest.approx(0.125) and abs(clip[0]) < 1e-6 and abs(clip[-1]) < 1e-6
