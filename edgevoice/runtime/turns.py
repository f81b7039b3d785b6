"""Turn-taking: who holds the floor, from per-frame speech evidence.

A pure state machine, fed one frame at a time (time, speech probability, level), so it runs the
same on the real clock and the virtual one and is tested without audio. It returns decisions; the
session acts on them (start thinking, pause or cancel speech).

States: LISTENING -> USER_SPEAKING -> THINKING -> SPEAKING -> LISTENING.

Barge-in while the agent speaks is two-step, because "mhm" and "wait, no" look the same for the
first few hundred milliseconds: at the user's speech onset the agent's audio *pauses* at once
(within one frame — the runtime fades the queued audio out), then either the user keeps talking
past ``backchannel_max_ms`` and the turn is theirs (barge-in: every stage is cancelled), or the
sound stops sooner and the agent *resumes* where it paused (a backchannel).

The decision vocabulary matches the Freeze-Omni turn-state head (0 keep listening, 1 respond or
barge in, 2 dismiss), so a learned policy can replace ``VadTurnPolicy`` without touching the
session.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TurnState(enum.Enum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"
    SPEAKING = "speaking"


class Decision(enum.Enum):
    NONE = "none"
    USER_STARTED = "user_started"  # speech onset while listening
    END_OF_TURN = "end_of_turn"  # the user finished: respond (head class 1)
    DISMISS = "dismiss"  # the sound was not a turn: keep listening (head class 2)
    PAUSE = "pause"  # possible interruption: stop the agent's audio now, keep its reply
    RESUME = "resume"  # it was a backchannel: continue the paused reply
    BARGE_IN = "barge_in"  # the user took the floor: cancel every stage (head class 1 while speaking)


@dataclass(frozen=True)
class TurnOptions:
    """Timing of turn-taking; every duration in milliseconds."""

    threshold: float = 0.5  # speech probability that counts as speech
    onset_ms: float = 32.0  # speech this long starts a user turn (or pauses the agent): two VAD frames
    endpoint_silence_ms: float = 600.0  # silence this long ends the user's turn
    min_turn_ms: float = 250.0  # shorter utterances are dismissed as noise
    backchannel_max_ms: float = 600.0  # speech over the agent shorter than this is a backchannel
    resume_silence_ms: float = 300.0  # silence after a short burst that lets the paused agent resume
    min_level: float = 0.003  # RMS below this is silence whatever the VAD says (residual echo)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        for name in ("onset_ms", "endpoint_silence_ms", "min_turn_ms", "backchannel_max_ms", "resume_silence_ms", "min_level"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class TurnPolicy:
    """Who holds the floor, and what the agent did with it: what every policy shares.

    Each policy adds only its evidence of the user's turn (VAD probabilities, the turn-state head)
    and the decisions it draws from it; the session reports the agent's side through these methods.
    """

    def __init__(self) -> None:
        self.state = TurnState.LISTENING
        self.paused = False  # the agent's audio is paused pending a barge-in decision
        self.speech_start: float | None = None  # onset of the current user speech
        self.last_speech: float | None = None  # time of the last speech frame

    def agent_started_speaking(self) -> None:
        if self.state is TurnState.THINKING:
            self.state = TurnState.SPEAKING

    def agent_takes_floor(self) -> None:
        """The agent speaks unprompted (a tool's result arrived while everyone was quiet)."""
        if self.state is TurnState.LISTENING:
            self.state = TurnState.THINKING

    def agent_finished(self) -> None:
        if self.state in (TurnState.THINKING, TurnState.SPEAKING) and not self.paused:
            self.state = self._floor_freed()

    def _floor_freed(self) -> TurnState:
        """The state once the agent's reply is over (a policy still hearing the user says so)."""
        return TurnState.LISTENING


class VadTurnPolicy(TurnPolicy):
    """Turn-taking from VAD probability and signal level."""

    def __init__(self, options: TurnOptions = TurnOptions()):
        super().__init__()
        self.options = options
        self._run_start: float | None = None  # start of the current run of speech frames
        self._onset_reported = False  # the current run already produced its onset decision

    def update(self, time: float, prob: float, level: float) -> Decision:
        """Feed one frame ending at ``time`` (seconds); return what the session should do."""
        speech = prob >= self.options.threshold and level >= self.options.min_level
        onset = self._track_onset(time, speech)
        if self.state is TurnState.LISTENING:
            return self._listening(onset)
        if self.state is TurnState.USER_SPEAKING:
            return self._user_speaking(time, speech)
        return self._agent_has_floor(time, speech, onset)

    def _track_onset(self, time: float, speech: bool) -> bool:
        """True once per run of speech, when it has lasted ``onset_ms``."""
        if not speech:
            self._run_start = None
            return False
        self.last_speech = time
        if self._run_start is None:
            self._run_start = time
            self._onset_reported = False
        if not self._onset_reported and (time - self._run_start) * 1000 >= self.options.onset_ms:
            self._onset_reported = True
            return True
        return False

    def _listening(self, onset: bool) -> Decision:
        if not onset:
            return Decision.NONE
        self.state = TurnState.USER_SPEAKING
        self.speech_start = self._run_start
        return Decision.USER_STARTED

    def _user_speaking(self, time: float, speech: bool) -> Decision:
        silence_ms = (time - self.last_speech) * 1000 if self.last_speech is not None else 0.0
        if speech or silence_ms < self.options.endpoint_silence_ms:
            return Decision.NONE
        duration_ms = (self.last_speech - self.speech_start) * 1000
        if duration_ms < self.options.min_turn_ms:
            self.state = TurnState.LISTENING
            return Decision.DISMISS
        self.state = TurnState.THINKING
        return Decision.END_OF_TURN

    def _agent_has_floor(self, time: float, speech: bool, onset: bool) -> Decision:
        if not self.paused:
            if onset:
                self.paused = True
                self.speech_start = self._run_start
                return Decision.PAUSE
            return Decision.NONE
        talked_ms = (self.last_speech - self.speech_start) * 1000
        if talked_ms >= self.options.backchannel_max_ms:
            self.paused = False
            self.state = TurnState.USER_SPEAKING  # their turn now; endpointing continues from here
            return Decision.BARGE_IN
        silence_ms = (time - self.last_speech) * 1000
        # Long enough that the pause after "Wait," does not count as the end of a backchannel.
        if not speech and silence_ms >= self.options.resume_silence_ms:
            self.paused = False
            return Decision.RESUME
        return Decision.NONE
